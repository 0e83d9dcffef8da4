"""Tensor codec: exact fp32, bounded fp16 / int8 error, integer buffers exact, compact on the wire, safe decode."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.manifests import TensorEncoding
from schemas.tensors import TensorCodecError, decode_tensors, encode_tensors, raw_fp32_bytes

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


def test_decode_refuses_output_over_the_limit() -> None:
    data = encode_tensors({"w": np.zeros(1_000_000, np.float32)}, FP32)
    assert len(data) < 10_000  # zeros compress extremely well: exactly what a decompression bomb exploits
    with pytest.raises(TensorCodecError, match="over the limit"):
        decode_tensors(data, FP32, max_decoded_bytes=1_000_000)
