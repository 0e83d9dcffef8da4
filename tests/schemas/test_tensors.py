"""Tensor codec: exact fp32, bounded fp16 / int8 error, integer buffers exact, compact on the wire, safe decode
(what a crafted payload declares is checked before anything is allocated)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import zstandard

from schemas.errors import RejectedError, RejectReason
from schemas.manifests import TensorEncoding
from schemas.tensors import (
    FORMAT,
    TensorCodecError,
    TensorSpec,
    decode_tensors,
    encode_tensors,
    raw_fp32_bytes,
    read_safetensors_specs,
    tensor_specs,
)

FP32 = TensorEncoding(dtype="fp32", compression="zstd")
FP16 = TensorEncoding(dtype="fp16", compression="zstd")
INT8_CHANNEL = TensorEncoding(dtype="int8", quantization="per_channel", compression="zstd")
INT8_TENSOR = TensorEncoding(dtype="int8", quantization="per_tensor", compression="none")


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    """About 12 MB of fp32 in the shapes of a small conv net, with BatchNorm buffers."""
    rng = np.random.default_rng(7)
    tensors: dict[str, np.ndarray] = {}
    for i, (out_c, in_c) in enumerate([(64, 32), (128, 64), (256, 128), (512, 256), (256, 512)]):
        fan_in = in_c * 9
        tensors[f"layer{i}.conv.weight"] = (rng.standard_normal((out_c, in_c, 3, 3)) / np.sqrt(fan_in)).astype(
            np.float32
        )
        tensors[f"layer{i}.bn.weight"] = (1 + 0.1 * rng.standard_normal(out_c)).astype(np.float32)
        tensors[f"layer{i}.bn.bias"] = (0.1 * rng.standard_normal(out_c)).astype(np.float32)
        tensors[f"layer{i}.bn.running_mean"] = rng.standard_normal(out_c).astype(np.float32)
        tensors[f"layer{i}.bn.running_var"] = rng.uniform(0.5, 2, out_c).astype(np.float32)
        tensors[f"layer{i}.bn.num_batches_tracked"] = np.array(1234 + i, dtype=np.int64)
    tensors["head.weight"] = (rng.standard_normal((1000, 256)) * 0.02).astype(np.float32)
    tensors["head.mask"] = rng.integers(0, 2, 1000).astype(np.bool_)
    return tensors


def test_fixture_is_about_12_mb(state_dict: dict[str, np.ndarray]) -> None:
    assert 11_500_000 < raw_fp32_bytes(state_dict) < 13_500_000


def test_fp32_round_trips_exactly(state_dict: dict[str, np.ndarray]) -> None:
    decoded = decode_tensors(encode_tensors(state_dict, FP32), FP32)
    assert decoded.keys() == state_dict.keys()
    for name, array in state_dict.items():
        assert decoded[name].dtype == array.dtype, name
        assert decoded[name].shape == array.shape, name
        assert np.array_equal(decoded[name], array), name


def test_fp16_error_within_documented_bound(state_dict: dict[str, np.ndarray]) -> None:
    decoded = decode_tensors(encode_tensors(state_dict, FP16), FP16)
    for name, array in state_dict.items():
        assert decoded[name].dtype == array.dtype
        if array.dtype.kind == "f":
            bound = 2.0**-11 * np.abs(array) + 2.0**-25
            assert np.all(np.abs(decoded[name] - array) <= bound), name
        else:
            assert np.array_equal(decoded[name], array), name


@pytest.mark.parametrize("encoding", [INT8_CHANNEL, INT8_TENSOR], ids=["per_channel", "per_tensor"])
def test_int8_error_within_half_a_step(state_dict: dict[str, np.ndarray], encoding: TensorEncoding) -> None:
    decoded = decode_tensors(encode_tensors(state_dict, encoding), encoding)
    for name, array in state_dict.items():
        if array.dtype.kind != "f":
            assert np.array_equal(decoded[name], array), name  # integer buffers travel exactly
            continue
        if encoding.quantization == "per_channel" and array.ndim >= 2:
            step = np.abs(array.reshape(array.shape[0], -1)).max(axis=1) / 127
            step = step.reshape((-1,) + (1,) * (array.ndim - 1))
        else:
            step = np.abs(array).max() / 127
        assert np.all(np.abs(decoded[name] - array) <= step / 2 * (1 + 1e-5) + 1e-12), name


def test_per_channel_beats_per_tensor_when_channels_differ() -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((4, 100)).astype(np.float32) * np.array([[100.0], [1.0], [0.01], [1.0]], np.float32)
    errors: dict[str, float] = {}
    for encoding in (INT8_CHANNEL, INT8_TENSOR):
        decoded = decode_tensors(encode_tensors({"w": weight}, encoding), encoding)["w"]
        errors[str(encoding.quantization)] = np.abs(decoded[2] - weight[2]).max()
    assert errors["per_channel"] < errors["per_tensor"] / 100


def test_int8_with_zstd_is_at_most_30_percent_of_fp32(state_dict: dict[str, np.ndarray]) -> None:
    wire = len(encode_tensors(state_dict, INT8_CHANNEL))
    assert wire <= 0.30 * raw_fp32_bytes(state_dict)


def test_int8_refuses_non_finite_values_naming_the_tensor() -> None:
    with pytest.raises(TensorCodecError, match=r"'bad\.weight' has NaN"):
        encode_tensors({"ok": np.ones(3, np.float32), "bad.weight": np.array([1.0, np.nan], np.float32)}, INT8_CHANNEL)


def test_fp16_refuses_overflow() -> None:
    with pytest.raises(TensorCodecError, match=r"'big'.*float16"):
        encode_tensors({"big": np.array([1e6], np.float32)}, FP16)


def test_all_zero_and_empty_tensors() -> None:
    tensors = {"zeros": np.zeros((3, 4), np.float32), "empty": np.zeros((0, 4), np.float32)}
    decoded = decode_tensors(encode_tensors(tensors, INT8_CHANNEL), INT8_CHANNEL)
    assert np.array_equal(decoded["zeros"], tensors["zeros"])
    assert decoded["empty"].shape == (0, 4)


def test_decode_refuses_mismatched_encoding() -> None:
    data = encode_tensors({"w": np.ones(4, np.float32)}, FP16)
    with pytest.raises(TensorCodecError, match="does not match"):
        decode_tensors(data, TensorEncoding(dtype="fp16", compression="zstd").model_copy(update={"dtype": "fp32"}))


def test_decode_refuses_corrupt_and_foreign_payloads() -> None:
    data = bytearray(encode_tensors({"w": np.ones(1000, np.float32)}, FP32))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(TensorCodecError):
        decode_tensors(bytes(data), FP32)
    with pytest.raises(TensorCodecError, match=r"too short|safetensors"):
        decode_tensors(b"hello", TensorEncoding(dtype="fp32", compression="none"))
    with pytest.raises(TensorCodecError, match="decompressed size"):
        decode_tensors(b"", FP32)
    with pytest.raises(RejectedError, match="not a zstd frame") as caught:
        decode_tensors(b"hello world", FP32)
    assert caught.value.reason == RejectReason.MALFORMED


def test_decode_refuses_output_over_the_limit() -> None:
    data = encode_tensors({"w": np.zeros(1_000_000, np.float32)}, FP32)
    assert len(data) < 10_000  # zeros compress extremely well: exactly what a decompression bomb exploits
    with pytest.raises(TensorCodecError, match="over the limit"):
        decode_tensors(data, FP32, max_decoded_bytes=1_000_000)


# -- crafted payloads ---------------------------------------------------------------------------------------------


def crafted(
    stored: dict[str, np.ndarray], dtypes: dict[str, Any], encoding: TensorEncoding = FP32, **metadata: str
) -> bytes:
    """A payload as a hostile sender writes it: real safetensors, whatever dtypes it likes to declare."""
    meta = {"format": FORMAT, "encoding": encoding.model_dump_json(), "dtypes": json.dumps(dtypes), **metadata}
    raw = safetensors.numpy.save(stored, metadata=meta)
    if encoding.compression == "zstd":
        return zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    return raw


@pytest.mark.parametrize(
    "dtype",
    ["<U256", "|S4096", "|V4096", "|O", "<c16", "<M8[ns]", "(1024,)<f4", ">f4", "<f16", ["<f4"], {"names": ["a"]}],
)
def test_only_numeric_dtypes_decode(dtype: Any) -> None:
    """'<U256' turned a 446-byte signed update into a 2 GB array: refused before any conversion."""
    data = crafted({"w": np.zeros(1000, np.float32)}, {"w": dtype})
    assert len(data) < 1000
    tracemalloc.start()
    try:
        with pytest.raises(RejectedError, match=r"tensor 'w' declares dtype .* not a numeric dtype") as caught:
            decode_tensors(data, FP32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == RejectReason.MALFORMED
    assert isinstance(caught.value, TensorCodecError)  # callers that catch codec errors still do
    assert peak < 200_000


def test_update_dtype_must_equal_the_base() -> None:
    base = {"w": TensorSpec(np.dtype(np.float32), (1000,)), "n": TensorSpec(np.dtype(np.int64), ())}
    wider = crafted({"w": np.zeros(1000, np.float64), "n": np.array(1, np.int64)}, {"w": "<f8", "n": "<i8"})
    with pytest.raises(RejectedError, match=r"tensor 'w' declares dtype float64, but the base model has float32") as c:
        decode_tensors(wider, FP32, base=base)
    assert c.value.reason == RejectReason.SHAPE_MISMATCH
    # Cast on decode (the stored bytes are small, the declared dtype wide): refused the same way.
    cast = crafted({"w": np.zeros(1000, np.float32), "n": np.array(1, np.int8)}, {"w": "<f4", "n": "<f8"})
    with pytest.raises(RejectedError, match=r"tensor 'n' declares dtype float64, but the base model has int64"):
        decode_tensors(cast, FP32, base=base)
    stranger = crafted({"w": np.zeros(1000, np.float32), "x": np.zeros(3, np.float32)}, {"w": "<f4", "x": "<f4"})
    with pytest.raises(RejectedError, match=r"tensor 'x' is not in the base model") as c:
        decode_tensors(stranger, FP32, base=base)
    assert c.value.reason == RejectReason.SHAPE_MISMATCH


def test_an_update_never_decodes_to_more_than_its_base(state_dict: dict[str, np.ndarray]) -> None:
    base = tensor_specs(state_dict)
    for encoding in (FP32, FP16, INT8_CHANNEL, INT8_TENSOR):  # honest updates of every encoding fit exactly
        decoded = decode_tensors(encode_tensors(state_dict, encoding), encoding, base=base, margin_bytes=0)
        assert tensor_specs(decoded) == base
    small = {"w": TensorSpec(np.dtype(np.float32), (10,))}
    big = crafted({"w": np.zeros(200_000, np.float32)}, {"w": "<f4"})
    assert len(big) < 10_000
    with pytest.raises(RejectedError, match=r"decode to 800000 bytes, over the limit of 65576 \(the base") as caught:
        decode_tensors(big, FP32, base=small)
    assert caught.value.reason == RejectReason.TOO_LARGE
    # A payload that would decompress beyond what any update of the base can take is refused before decompressing.
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(50_000_000))
    with pytest.raises(RejectedError, match=r"decompress to 50000000 bytes, over the limit") as caught:
        decode_tensors(bomb, FP32, base=small)
    assert caught.value.reason == RejectReason.TOO_LARGE


def test_int8_scales_must_fit_their_tensor() -> None:
    """Scales of shape (1000,) against a (1, 1000) tensor would broadcast to a (1000, 1000) float array."""
    stored: dict[str, np.ndarray] = {"w": np.zeros((1, 1000), np.int8), "w::scale": np.ones(1000, np.float32)}
    with pytest.raises(RejectedError, match=r"scales of tensor 'w' are float32 \[1000\], expected float32 \[1\]"):
        decode_tensors(crafted(stored, {"w": "<f4"}, INT8_CHANNEL), INT8_CHANNEL)
    unscaled = crafted({"w": np.zeros((4, 4), np.int8)}, {"w": "<f4"}, INT8_CHANNEL)
    with pytest.raises(RejectedError, match=r"tensor 'w' is int8 without its scales"):
        decode_tensors(unscaled, INT8_CHANNEL)
    as_fp32 = crafted({"w": np.zeros((4, 4), np.float32)}, {"w": "<f4"}, FP16)
    with pytest.raises(RejectedError, match=r"tensor 'w' is stored as float32, expected float16"):
        decode_tensors(as_fp32, FP16)


def test_undeclared_stored_tensors_are_refused() -> None:
    data = crafted({"w": np.zeros(4, np.float32), "hidden": np.zeros(1000, np.float32)}, {"w": "<f4"})
    with pytest.raises(RejectedError, match=r"undeclared tensors \['hidden'\]") as caught:
        decode_tensors(data, FP32)
    assert caught.value.reason == RejectReason.MALFORMED


def _oversized_header(size: int) -> bytes:
    """A valid fedinspect payload whose JSON header is padded to ``size`` bytes (a 25 MB one was parsed)."""
    metadata = {"format": FORMAT, "encoding": FP32.model_dump_json(), "dtypes": "{}", "pad": ""}
    metadata["pad"] = "x" * (size - len(json.dumps({"__metadata__": metadata}).encode()))
    header = json.dumps({"__metadata__": metadata}).encode()
    assert len(header) == size
    return len(header).to_bytes(8, "little") + header


def test_safetensors_header_is_capped_before_it_is_parsed(tmp_path: Path) -> None:
    raw = _oversized_header(25 * 1024**2)
    data = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    tracemalloc.start()
    try:
        with pytest.raises(RejectedError, match=r"header of 26214400 bytes is over the limit of 1048576") as caught:
            decode_tensors(data, FP32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == RejectReason.TOO_LARGE
    assert peak < len(raw) + 1024**2  # the decompressed bytes, not a parsed 25 MB JSON document on top
    assert decode_tensors(data, FP32, max_header_bytes=len(raw)) == {}  # the cap was the only reason
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(raw)
    with pytest.raises(RejectedError, match="header of 26214400 bytes"):
        read_safetensors_specs(weights)


def test_weights_file_specs_come_from_the_header(tmp_path: Path, state_dict: dict[str, np.ndarray]) -> None:
    weights = tmp_path / "weights.safetensors"
    safetensors.numpy.save_file(state_dict, str(weights))
    assert read_safetensors_specs(weights) == tensor_specs(state_dict)
    weights.write_bytes(weights.read_bytes() + b"trailing")
    with pytest.raises(RejectedError, match="the file holds"):
        read_safetensors_specs(weights)
