"""Keras classifiers (.keras, .h5, SavedModel) to ONNX, converted in a separate TensorFlow process.

TensorFlow and torch segfault when imported in the wrong order in one process, so the conversion runs in
``exporters.keras_worker`` and this side only reads its results: the ONNX file, the parity inputs with Keras'
outputs, and the weights. Keras models take NHWC input; the input spec says so and the edge follows it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from exporters.child import run_worker
from exporters.common import (
    ExportOptions,
    ModelDescription,
    ensure_empty_output,
    finish_onnx,
    with_template,
    write_bundle,
)
from exporters.errors import ExportError
from schemas.manifests import ArchitectureSpec, Framework, InputSpec, ModelManifest, Task, TemplateInput
from schemas.onnxmeta import ScoreKind

WORKER_TIMEOUT_S = 900


def export_keras(
    source: Path,
    out_dir: Path,
    *,
    name: str,
    classes: Sequence[str],
    scale: float = 1.0 / 255.0,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    color: str = "rgb",
    version: int = 0,
    parent: int | None = None,
    options: ExportOptions | None = None,
    python: str | None = None,
    template: TemplateInput = TemplateInput.NONE,
) -> ModelManifest:
    """Export a Keras classifier to a model bundle in ``out_dir``.

    ``scale``, ``mean`` and ``std`` describe the preprocessing the model expects outside itself (a model with its
    own Rescaling layer takes scale=1). ``python`` is the interpreter of the TensorFlow process (default: this one).
    """
    import onnx

    options = options or ExportOptions()
    source, out_dir = Path(source), Path(out_dir)
    ensure_empty_output(out_dir)
    with tempfile.TemporaryDirectory(prefix="fedinspect-keras-") as scratch:
        request = {
            "model": str(source.resolve()),
            "work_dir": scratch,
            "scale": scale,
            "mean": list(mean),
            "std": list(std),
            "color": color,
            "opset": options.opset,
            "parity_batch": options.parity_batch,
        }
        result = run_worker(
            "exporters.keras_worker",
            request,
            what=f"{source}: Keras conversion",
            timeout_s=WORKER_TIMEOUT_S,
            python=python,
            # The conversion runs on the CPU: deterministic, and never competes with inference for the GPU.
            env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
        )
        spec = with_template(InputSpec.model_validate(result["input"]), template, model=name)
        if result["num_outputs"] != len(classes):
            raise ExportError(f"{source}: model outputs {result['num_outputs']} classes, but {len(classes)} were named")
        description = ModelDescription(
            name=name,
            task=Task.CLASSIFY,
            classes=list(classes),
            input=spec,
            architecture=ArchitectureSpec(
                framework=Framework.KERAS, name=source.name, params={"format": result["format"]}
            ),
            version=version,
            parent=parent,
            scores=ScoreKind.PROBABILITIES if result["probabilities"] else ScoreKind.LOGITS,
        )
        model = finish_onnx(onnx.load(result["onnx"]), description, options)
        with np.load(result["parity"]) as parity:
            inputs, outputs = parity["inputs"], parity["outputs"]
        import safetensors.numpy

        weights = safetensors.numpy.load_file(result["weights"])
        return write_bundle(
            out_dir, model, description=description, options=options, weights=weights, parity=(inputs, [outputs])
        )
