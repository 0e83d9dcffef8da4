"""Tensor codec: a state dict or delta (name -> numpy array) to bytes and back, via safetensors and zstd.

Encodings (named in the manifest as ``TensorEncoding``):

- ``fp32``: lossless; every tensor travels in its own dtype.
- ``fp16``: float tensors cast to float16. Error per value <= 2**-11 * |x| for |x| >= 2**-14 (about 0.05 %), and
  <= 2**-25 below that. Values beyond float16's range (65504) are refused rather than turned into inf.
- ``int8``: symmetric quantization, q = round(x / s) in [-127, 127], with s = max|x| / 127 per tensor or per
  output channel (axis 0; tensors with fewer than 2 dimensions use one scale). Error per value <= s / 2.
  Non-finite values cannot be quantized and are refused, naming the tensor.

Integer and boolean tensors (e.g. BatchNorm ``num_batches_tracked``) always travel exactly. Decoding restores
every tensor's original dtype. The container is safetensors (no pickle, no code), optionally zstd-compressed;
decoding refuses output larger than a limit, so a crafted payload cannot exhaust memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import safetensors.numpy
import zstandard

from schemas.errors import FedinspectError
from schemas.manifests import Compression, Quantization, TensorDtype, TensorEncoding

FORMAT = "fedinspect.tensors/1"
SCALE_SUFFIX = "::scale"
DEFAULT_MAX_DECODED_BYTES = 4 * 1024**3
ZSTD_LEVEL = 3
_FP16_MAX = float(np.finfo(np.float16).max)


class TensorCodecError(FedinspectError):
    """Tensors cannot be encoded or a payload cannot be decoded; the message names the tensor or the problem."""


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


def _read_metadata(raw: bytes) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then the JSON header with "__metadata__".
    if len(raw) < 8:
        raise TensorCodecError("payload is too short to be a safetensors file")
    header_len = int.from_bytes(raw[:8], "little")
    if header_len > len(raw) - 8:
        raise TensorCodecError("safetensors header length exceeds the payload")
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorCodecError(f"safetensors header is not valid JSON: {exc}") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise TensorCodecError(f"payload is not a {FORMAT} tensor file")
    return metadata


def decode_tensors(
    data: bytes, encoding: TensorEncoding, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> dict[str, np.ndarray]:
    """Decode bytes from ``encode_tensors`` back to arrays of their original dtypes.

    ``encoding`` is what the (signed) manifest claims; the payload must agree with it.
    """
    if encoding.compression == Compression.ZSTD:
        size = zstandard.frame_content_size(data) if len(data) >= 4 else -1
        if size < 0:
            raise TensorCodecError("zstd payload does not declare its decompressed size")
        if size > max_decoded_bytes:
            raise TensorCodecError(f"payload would decompress to {size} bytes, over the limit of {max_decoded_bytes}")
        try:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise TensorCodecError(f"zstd payload is corrupt: {exc}") from None
    else:
        if len(data) > max_decoded_bytes:
            raise TensorCodecError(f"payload of {len(data)} bytes is over the limit of {max_decoded_bytes}")
        raw = data
    metadata = _read_metadata(raw)
    try:
        declared = TensorEncoding.model_validate_json(metadata["encoding"])
        dtypes: dict[str, str] = json.loads(metadata["dtypes"])
        stored = safetensors.numpy.load(raw)
    except Exception as exc:  # pydantic, json and safetensors each raise their own types for malformed input
        raise TensorCodecError(f"payload is not a valid {FORMAT} safetensors file: {exc}") from None
    if declared != encoding:
        raise TensorCodecError("payload encoding does not match the manifest's encoding")
    tensors: dict[str, np.ndarray] = {}
    for name, dtype_str in dtypes.items():
        if name not in stored:
            raise TensorCodecError(f"payload lacks tensor {name!r}")
        dtype = np.dtype(dtype_str)
        array = stored[name]
        scales = stored.get(name + SCALE_SUFFIX)
        if scales is not None:
            array = (array.astype(np.float32) * _broadcast(scales, array.ndim)).astype(dtype)
        tensors[name] = array.astype(dtype, copy=False)
    return tensors


def raw_fp32_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """Bytes the tensors take as plain fp32 (integer tensors at their own size): the baseline for ratios."""
    return sum(a.size * 4 if _is_float(np.asarray(a)) else np.asarray(a).nbytes for a in tensors.values())
