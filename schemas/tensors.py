"""Tensor codec: a state dict or delta (name -> numpy array) to bytes and back, via safetensors and zstd.

Encodings (named in the manifest as ``TensorEncoding``):

- ``fp32``: lossless; every tensor travels in its own dtype.
- ``fp16``: float tensors cast to float16. Error per value <= 2**-11 * |x| for |x| >= 2**-14 (about 0.05 %), and
  <= 2**-25 below that. Values beyond float16's range (65504) are refused rather than turned into inf.
- ``int8``: symmetric quantization, q = round(x / s) in [-127, 127], with s = max|x| / 127 per tensor or per
  output channel (axis 0; tensors with fewer than 2 dimensions use one scale). Error per value <= s / 2.
  Non-finite values cannot be quantized and are refused, naming the tensor.

Integer and boolean tensors (e.g. BatchNorm ``num_batches_tracked``) always travel exactly. Decoding restores
every tensor's original dtype. The container is safetensors (no pickle, no code), optionally zstd-compressed.

A payload is untrusted even when signed (an edge's key may be stolen), and a few hundred bytes can declare
gigabytes, so decoding checks what the payload declares before it allocates or converts anything: the safetensors
header's length against a cap (read from the 8-byte prefix, before the header is parsed), numeric dtypes only
(looked up, never parsed by numpy: '<U256' once turned a 446-byte update into a 2 GB array), stored dtypes and
int8 scale shapes consistent with the encoding, and the decoded size; against a base model, the base's dtype
per tensor and at most the base's bytes plus a small margin.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import zstandard

from schemas.errors import FedinspectError, RejectedError, RejectReason
from schemas.manifests import Compression, Quantization, TensorDtype, TensorEncoding

FORMAT = "fedinspect.tensors/1"
SCALE_SUFFIX = "::scale"
DEFAULT_MAX_DECODED_BYTES = 4 * 1024**3
DEFAULT_MAX_HEADER_BYTES = 1024**2
"""Largest safetensors JSON header read (about 10 000 tensors); the safetensors library alone allows 100 MB."""
DEFAULT_DECODE_MARGIN_BYTES = 64 * 1024
"""What an update may decode to beyond its base model's bytes."""
ZSTD_LEVEL = 3
_FP16_MAX = float(np.finfo(np.float16).max)


class TensorCodecError(FedinspectError):
    """Tensors cannot be encoded or a payload cannot be decoded; the message names the tensor or the problem."""


class TensorDecodeError(TensorCodecError, RejectedError):
    """A payload from the network was refused while decoding; ``reason`` says why (malformed, too_large,
    shape_mismatch) and the message names the tensor and what was wrong."""


def _is_float(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating))


def _int8_scales(name: str, array: np.ndarray, quantization: Quantization) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise TensorCodecError(f"tensor {name!r} has NaN or infinite values and cannot be quantized to int8")
    if quantization == Quantization.PER_CHANNEL and array.ndim >= 2 and array.shape[0] > 0:
        peak = np.abs(array.reshape(array.shape[0], -1)).max(axis=1).astype(np.float32)
    else:
        peak = np.array([np.abs(array).max() if array.size else 0.0], dtype=np.float32)
    scales = peak / np.float32(127.0)
    scales[scales == 0] = 1.0  # an all-zero channel quantizes to zeros with any scale
    return np.asarray(scales, dtype=np.float32)


def contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous view or copy that keeps the shape (0-d tensors included)."""
    # np.ascontiguousarray would turn 0-d tensors (e.g. num_batches_tracked) into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


def state_delta(trained: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """trained - base per tensor, in the base's dtype and shape (0-d counters stay arrays); keys must match."""
    if set(trained) != set(base):
        missing, extra = sorted(set(base) - set(trained)), sorted(set(trained) - set(base))
        raise ValueError(f"tensor names differ: missing {missing[:5]}, extra {extra[:5]}")
    return {key: np.asarray(trained[key] - base[key], dtype=base[key].dtype) for key in base}


def _broadcast(scales: np.ndarray, ndim: int) -> np.ndarray:
    return scales.reshape((-1,) + (1,) * (ndim - 1)) if scales.size > 1 else scales.reshape(())


def encode_tensors(tensors: Mapping[str, np.ndarray], encoding: TensorEncoding) -> bytes:
    """Encode named arrays as the manifest's ``encoding`` says."""
    stored: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, value in tensors.items():
        if SCALE_SUFFIX in name:
            raise TensorCodecError(f"tensor name {name!r} must not contain {SCALE_SUFFIX!r}")
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise TensorCodecError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        dtypes[name] = array.dtype.str
        if not _is_float(array) or encoding.dtype == TensorDtype.FP32:
            stored[name] = contiguous(array)
        elif encoding.dtype == TensorDtype.FP16:
            finite = array[np.isfinite(array)]
            if finite.size and float(np.abs(finite).max()) > _FP16_MAX:
                raise TensorCodecError(
                    f"tensor {name!r} has values beyond float16's range (|x| > {_FP16_MAX:g}); use fp32 or int8"
                )
            stored[name] = contiguous(array.astype(np.float16))
        else:
            assert encoding.quantization is not None  # guaranteed by TensorEncoding
            scales = _int8_scales(name, array, encoding.quantization)
            quantized = np.rint(array.astype(np.float32) / _broadcast(scales, array.ndim))
            stored[name] = contiguous(np.clip(quantized, -127, 127).astype(np.int8))
            stored[name + SCALE_SUFFIX] = scales
    metadata = {"format": FORMAT, "encoding": encoding.model_dump_json(), "dtypes": json.dumps(dtypes)}
    raw = safetensors.numpy.save(stored, metadata=metadata)
    if encoding.compression == Compression.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(raw)
    return raw


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's dtype and shape without its values: what a base model fixes for every update against it."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def tensor_specs(tensors: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """The specs of arrays in memory (e.g. a base model's weights)."""
    return {name: TensorSpec(np.asarray(a).dtype, tuple(np.asarray(a).shape)) for name, a in tensors.items()}


# The only dtypes that decode: numeric, fixed size, little-endian. Looked up by string, so an untrusted dtype
# string is never parsed by numpy (which would build strings, objects, structured or sub-array dtypes from it).
_NUMERIC = (
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
)
NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {np.dtype(t).newbyteorder("<").str: np.dtype(t) for t in _NUMERIC}
"""numpy dtype strings ('<f4', '|i1', ...) a payload may declare as a tensor's original dtype."""
_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
}


def _refuse(reason: RejectReason, message: str) -> TensorDecodeError:
    return TensorDecodeError(reason, message)


def _header_length(prefix: bytes, total: int, max_header_bytes: int) -> int:
    """The u64 little-endian length in front of a safetensors header, checked before anything reads the header."""
    if len(prefix) < 8:
        raise _refuse(RejectReason.MALFORMED, "payload is too short to be a safetensors file")
    header_len = int.from_bytes(prefix[:8], "little")
    if header_len > max_header_bytes:
        raise _refuse(
            RejectReason.TOO_LARGE,
            f"safetensors header of {header_len} bytes is over the limit of {max_header_bytes}",
        )
    if header_len > total - 8:
        raise _refuse(RejectReason.MALFORMED, "safetensors header length exceeds the payload")
    return header_len


def _parse_header(header_bytes: bytes, data_len: int) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """The tensors (numeric dtypes only, offsets consistent with their shapes) and metadata of a header."""
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _refuse(RejectReason.MALFORMED, f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _refuse(RejectReason.MALFORMED, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _refuse(RejectReason.MALFORMED, "safetensors metadata is not a map of strings")
    specs: dict[str, TensorSpec] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise _refuse(RejectReason.MALFORMED, f"tensor {name!r}: header entry is not an object")
        wire_dtype = entry.get("dtype")
        dtype = _SAFETENSORS_DTYPES.get(wire_dtype) if isinstance(wire_dtype, str) else None
        if dtype is None:
            raise _refuse(
                RejectReason.MALFORMED,
                f"tensor {name!r}: stored dtype {str(wire_dtype)[:40]!r} is not a numeric dtype "
                f"({', '.join(_SAFETENSORS_DTYPES)})",
            )
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise _refuse(RejectReason.MALFORMED, f"tensor {name!r}: shape is not a list of sizes")
        spec = TensorSpec(dtype, tuple(shape))
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
            and offsets[1] - offsets[0] == spec.nbytes
        ):
            raise _refuse(
                RejectReason.MALFORMED, f"tensor {name!r}: data offsets do not match its shape and the payload"
            )
        specs[name] = spec
    return specs, metadata


def read_safetensors_specs(path: Path, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> dict[str, TensorSpec]:
    """Dtypes and shapes of a safetensors file from its header alone (capped at ``max_header_bytes``).

    Raises TensorDecodeError (a RejectedError) for an oversized or malformed header, a non-numeric dtype, or
    offsets that do not tile the file: e.g. an edge checks a model's weights before installing them.
    """
    total = path.stat().st_size
    with path.open("rb") as handle:
        header_len = _header_length(handle.read(8), total, max_header_bytes)
        specs, _ = _parse_header(handle.read(header_len), total - 8 - header_len)
    stored = sum(spec.nbytes for spec in specs.values())
    if stored != total - 8 - header_len:
        raise _refuse(
            RejectReason.MALFORMED, f"{path.name}: tensors take {stored} bytes, the file holds {total - 8 - header_len}"
        )
    return specs


def _scale_shapes(spec: TensorSpec, quantization: Quantization | None) -> set[tuple[int, ...]]:
    """Shapes the int8 scales of a tensor may have (``_int8_scales``): one, or one per output channel."""
    if quantization == Quantization.PER_CHANNEL and len(spec.shape) >= 2 and spec.shape[0] > 0:
        return {(spec.shape[0],)}
    return {(1,)}


def _raw_limit(base: Mapping[str, TensorSpec], encoding: TensorEncoding, max_header_bytes: int, margin: int) -> int:
    """The most bytes an honest payload against ``base`` can decompress to: its tensors at most at their own size,
    int8 scales (4 bytes each, at most one per output channel), the header and the margin."""
    scales = 0
    if encoding.dtype == TensorDtype.INT8:
        for spec in base.values():
            if spec.dtype.kind == "f":
                scales += 4 * max(math.prod(s) for s in _scale_shapes(spec, encoding.quantization))
    return sum(spec.nbytes for spec in base.values()) + scales + 8 + max_header_bytes + margin


def decode_tensors(
    data: bytes,
    encoding: TensorEncoding,
    *,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    base: Mapping[str, TensorSpec] | None = None,
    margin_bytes: int = DEFAULT_DECODE_MARGIN_BYTES,
) -> dict[str, np.ndarray]:
    """Decode bytes from ``encode_tensors`` back to arrays of their original dtypes.

    ``encoding`` is what the (signed) manifest claims; the payload must agree with it. Everything the payload
    declares is checked before anything is allocated or converted: the header's size (``max_header_bytes``),
    numeric dtypes only, stored dtypes and int8 scales consistent with the encoding, and the decoded size
    (``max_decoded_bytes``). With ``base`` (the model an update is against), every tensor must be one of the
    base's with the base's dtype, and the payload and its decoded tensors may not exceed the base's bytes (plus
    int8 scales, the header and ``margin_bytes``). Refusals are TensorDecodeError (a RejectedError) naming the
    tensor and what was wrong.
    """
    limit = max_decoded_bytes
    if base is not None:
        limit = min(limit, _raw_limit(base, encoding, max_header_bytes, margin_bytes))
    if encoding.compression == Compression.ZSTD:
        try:
            size = zstandard.frame_content_size(data) if len(data) >= 4 else -1
        except zstandard.ZstdError:
            raise _refuse(RejectReason.MALFORMED, "payload is not a zstd frame") from None
        if size < 0:
            raise _refuse(RejectReason.MALFORMED, "zstd payload does not declare its decompressed size")
        if size > limit:
            raise _refuse(
                RejectReason.TOO_LARGE, f"payload would decompress to {size} bytes, over the limit of {limit}"
            )
        try:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise _refuse(RejectReason.MALFORMED, f"zstd payload is corrupt: {exc}") from None
    else:
        if len(data) > limit:
            raise _refuse(RejectReason.TOO_LARGE, f"payload of {len(data)} bytes is over the limit of {limit}")
        raw = data
    header_len = _header_length(raw, len(raw), max_header_bytes)
    stored_specs, metadata = _parse_header(raw[8 : 8 + header_len], len(raw) - 8 - header_len)
    if metadata.get("format") != FORMAT:
        raise _refuse(RejectReason.MALFORMED, f"payload is not a {FORMAT} tensor file")
    try:
        declared = TensorEncoding.model_validate_json(metadata["encoding"])
        dtypes = json.loads(metadata["dtypes"])
    except (KeyError, ValueError, RecursionError) as exc:  # pydantic's ValidationError is a ValueError
        raise _refuse(RejectReason.MALFORMED, f"payload is not a valid {FORMAT} file: {exc}") from None
    if declared != encoding:
        raise _refuse(RejectReason.MALFORMED, "payload encoding does not match the manifest's encoding")
    if not isinstance(dtypes, dict):
        raise _refuse(RejectReason.MALFORMED, "payload's dtypes metadata is not a map")
    specs = _declared_specs(dtypes, stored_specs, encoding, base)
    decoded_bytes = sum(spec.nbytes for spec in specs.values())
    decoded_limit = max_decoded_bytes
    if base is not None:
        decoded_limit = min(decoded_limit, sum(spec.nbytes for spec in base.values()) + margin_bytes)
    if decoded_bytes > decoded_limit:
        raise _refuse(
            RejectReason.TOO_LARGE,
            f"tensors would decode to {decoded_bytes} bytes, over the limit of {decoded_limit}"
            + (" (the base model's size plus the margin)" if base is not None else ""),
        )
    try:
        stored = safetensors.numpy.load(raw)
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise _refuse(RejectReason.MALFORMED, f"payload is not a valid {FORMAT} safetensors file: {exc}") from None
    tensors: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        array = stored[name]
        scales = stored.get(name + SCALE_SUFFIX)
        if scales is not None:
            array = (array.astype(np.float32) * _broadcast(scales, array.ndim)).astype(spec.dtype)
        tensors[name] = array.astype(spec.dtype, copy=False)
    return tensors


def _declared_specs(
    dtypes: dict[str, Any],
    stored: Mapping[str, TensorSpec],
    encoding: TensorEncoding,
    base: Mapping[str, TensorSpec] | None,
) -> dict[str, TensorSpec]:
    """The decoded spec of every declared tensor, after checking it against what is stored and the base."""
    specs: dict[str, TensorSpec] = {}
    for name, dtype_str in dtypes.items():
        dtype = NUMERIC_DTYPES.get(dtype_str) if isinstance(dtype_str, str) else None
        if dtype is None:
            raise _refuse(
                RejectReason.MALFORMED,
                f"tensor {name!r} declares dtype {str(dtype_str)[:40]!r}, which is not a numeric dtype "
                f"(allowed: {', '.join(NUMERIC_DTYPES)})",
            )
        if name not in stored:
            raise _refuse(RejectReason.MALFORMED, f"payload lacks tensor {name!r}")
        reference = None if base is None else base.get(name)
        if base is not None and reference is None:
            raise _refuse(RejectReason.SHAPE_MISMATCH, f"tensor {name!r} is not in the base model")
        if reference is not None and dtype != reference.dtype:
            raise _refuse(
                RejectReason.SHAPE_MISMATCH,
                f"tensor {name!r} declares dtype {dtype}, but the base model has {reference.dtype}",
            )
        spec = TensorSpec(dtype, stored[name].shape)
        _check_stored(name, spec, stored, encoding)
        specs[name] = spec
    extra = sorted(set(stored) - set(specs) - {name + SCALE_SUFFIX for name in specs})
    if extra:
        raise _refuse(RejectReason.MALFORMED, f"payload holds undeclared tensors {extra[:5]}")
    return specs


def _check_stored(name: str, spec: TensorSpec, stored: Mapping[str, TensorSpec], encoding: TensorEncoding) -> None:
    """The stored dtype (and int8 scales) must be what ``encode_tensors`` writes for ``spec`` and ``encoding``."""
    wire = stored[name].dtype
    scales = stored.get(name + SCALE_SUFFIX)
    is_float = spec.dtype.kind == "f"
    if not is_float or encoding.dtype == TensorDtype.FP32:
        expected = spec.dtype
    elif encoding.dtype == TensorDtype.FP16:
        expected = np.dtype(np.float16)
    else:
        expected = np.dtype(np.int8)
        if scales is None:
            raise _refuse(RejectReason.MALFORMED, f"tensor {name!r} is int8 without its scales")
        allowed = _scale_shapes(spec, encoding.quantization)
        if scales.dtype != np.float32 or scales.shape not in allowed:
            raise _refuse(
                RejectReason.MALFORMED,
                f"scales of tensor {name!r} are {scales.dtype} {list(scales.shape)}, expected float32 "
                f"{list(next(iter(allowed)))} for shape {list(spec.shape)}",
            )
    if wire != expected:
        raise _refuse(
            RejectReason.MALFORMED, f"tensor {name!r} is stored as {wire}, expected {expected} for {encoding.dtype}"
        )
    if scales is not None and expected != np.int8:
        raise _refuse(RejectReason.MALFORMED, f"tensor {name!r} has scales but is not int8-quantized")


def raw_fp32_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Bytes the tensors take as plain fp32 (integer tensors at their own size): the baseline for ratios."""
    return sum(a.size * 4 if _is_float(np.asarray(a)) else np.asarray(a).nbytes for a in tensors.values())
