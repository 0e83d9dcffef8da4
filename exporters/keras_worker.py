"""The TensorFlow side of the Keras exporter; runs in its own process (``python -m exporters.keras_worker``).

TensorFlow and torch crash when imported in the wrong order in one process, so nothing here may import torch
and the parent never imports TensorFlow. The parent passes a JSON request on the command line; this process loads
the Keras model (.keras, .h5 or a SavedModel directory), writes the ONNX file, the parity inputs with the source's
outputs (.npz) and the weights (.safetensors), and prints a JSON result on its last stdout line. On a bad input it
prints one line ``error: ...`` to stderr and exits with status 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from runtime.processes import die_with_parent

EXIT_BAD_INPUT = 2


class WorkerInputError(Exception):
    """The model file or the request cannot be used."""


def _input_shape(shape: Any) -> tuple[int, int, int]:
    dims = list(shape)
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise WorkerInputError(f"expected an image input [batch, height, width, channels] with fixed sizes, got {dims}")
    height, width, channels = (int(d) for d in dims[1:])
    if channels not in (1, 3):
        raise WorkerInputError(f"input has {channels} channels; 1 or 3 expected (NHWC layout)")
    return height, width, channels


def _spec(request: dict[str, Any], height: int, width: int, channels: int) -> Any:
    from schemas.manifests import ColorMode, InputSpec, ResizeMode

    mean = request.get("mean") or [0.0] * channels
    std = request.get("std") or [1.0] * channels
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    return InputSpec(
        width=width,
        height=height,
        channels=channels,
        color=ColorMode.GRAY if channels == 1 else ColorMode(request.get("color", "rgb")),
        resize=ResizeMode(request.get("resize", "resize")),
        scale=float(request.get("scale", 1.0 / 255.0)),
        mean=tuple(mean),
        std=tuple(std),
        layout="NHWC",
    )


def _load(path: Path) -> tuple[Any, Any, str]:
    """(callable on a batch, keras model or None, format) for a .keras / .h5 file or a SavedModel directory."""
    import tensorflow as tf

    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise WorkerInputError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
        loaded = tf.saved_model.load(str(path))
        if "serving_default" not in loaded.signatures:
            raise WorkerInputError(f"{path}: SavedModel has no 'serving_default' signature")
        return loaded, None, "saved_model"
    if path.suffix not in (".keras", ".h5"):
        raise WorkerInputError(f"{path}: expected a .keras or .h5 file or a SavedModel directory")
    import keras

    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises ValueError / OSError / zipfile errors for bad files
        raise WorkerInputError(f"{path}: cannot load Keras model: {exc}") from None
    return model, model, path.suffix.lstrip(".")


def _is_probabilities(model: Any, outputs: np.ndarray) -> bool:
    last = getattr(model, "layers", [None])[-1] if model is not None else None
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if activation == "softmax":
        return True
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-4))


def convert(request: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    from exporters.common import parity_inputs

    source = Path(request["model"])
    if not source.exists():
        raise WorkerInputError(f"{source}: model not found")
    work = Path(request["work_dir"])
    loaded, keras_model, fmt = _load(source)
    opset = int(request.get("opset", 18))
    onnx_path = work / "model.onnx"
    if keras_model is not None:
        height, width, channels = _input_shape(keras_model.inputs[0].shape)
        spec = _spec(request, height, width, channels)
        inputs = parity_inputs(spec, int(request.get("parity_batch", 2)))
        outputs = np.asarray(keras_model(inputs, training=False))
        keras_model.export(str(onnx_path), format="onnx", verbose=False, opset_version=opset)
        weights = {variable.path: np.asarray(variable.numpy()) for variable in keras_model.weights}
    else:
        import tf2onnx

        signature = loaded.signatures["serving_default"]
        ((input_name, input_spec),) = signature.structured_input_signature[1].items()
        output_names = list(signature.structured_outputs)
        if len(output_names) != 1:
            raise WorkerInputError(f"{source}: serving_default has {len(output_names)} outputs; 1 expected")
        height, width, channels = _input_shape(input_spec.shape)
        spec = _spec(request, height, width, channels)
        inputs = parity_inputs(spec, int(request.get("parity_batch", 2)))

        signature_spec = [tf.TensorSpec([None, height, width, channels], tf.float32, name="images")]

        @tf.function(input_signature=signature_spec)  # type: ignore[untyped-decorator]
        def serve(images: Any) -> Any:
            return signature(**{input_name: images})[output_names[0]]

        outputs = np.asarray(serve(tf.constant(inputs)))
        model_proto, _ = tf2onnx.convert.from_function(
            serve, input_signature=signature_spec, opset=opset, output_path=str(onnx_path)
        )
        del model_proto
        weights = {variable.name: np.asarray(variable.numpy()) for variable in loaded.variables}
    if outputs.ndim != 2:
        raise WorkerInputError(f"{source}: expected [batch, classes] outputs, got shape {outputs.shape}")
    import safetensors.numpy

    np.savez(work / "parity.npz", inputs=inputs, outputs=outputs)
    unique: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        key = name if name not in unique else f"{name}#{len(unique)}"
        unique[key] = np.ascontiguousarray(value)
    safetensors.numpy.save_file(unique, str(work / "weights.safetensors"))
    return {
        "format": fmt,
        "onnx": str(onnx_path),
        "parity": str(work / "parity.npz"),
        "weights": str(work / "weights.safetensors"),
        "input": spec.model_dump(mode="json"),
        "num_outputs": int(outputs.shape[1]),
        "probabilities": _is_probabilities(keras_model, outputs),
        "tensorflow": tf.__version__,
    }


def main(argv: list[str]) -> int:
    die_with_parent()  # an export that outlives its caller holds memory (and maybe a GPU) for nothing
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if len(argv) != 1:
        print("error: usage: python -m exporters.keras_worker '<json request>'", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = convert(json.loads(argv[0]))
    except WorkerInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
