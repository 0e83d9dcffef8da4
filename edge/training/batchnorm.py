"""Local BatchNorm statistics: fit a global classifier's normalization to this plant's own images (SiloBN / AdaBN).

A BatchNorm layer normalizes with running means and variances that it learned from the images it trained on. After
FedAvg those statistics are the average over every plant, and when plants differ in lighting, board design or camera
they fit none of them: the global model then says "good" (or "defective") to everything at some plants although
its learned weights can tell the two apart. Measured in the demo's setting (3 generated plants, resnet18, 5 rounds of
5 local epochs): the global model scored 0.98 / 0.50 / 0.58 on the plants' test boards with the averaged statistics,
0.98 / 0.83 / 0.73 with each plant's own. So before a new global classifier is checked and served, the edge
recomputes those statistics from its own recent images (no labels needed) and serves that adapted copy; the learned
weights stay exactly the hub's signed ones.

Runs as ``python -m edge.training.batchnorm '<json request>'`` (``adapt_in_child``) so torch stays out of the
agent process; prints the adapted bundle's manifest as JSON on its last stdout line, or ``error: ...`` and exit 2.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.inference.errors import ImageError
from edge.inference.images import decode_image, to_tensor
from edge.training.jobs import TrainingError
from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest
from schemas.errors import FedinspectError
from schemas.manifests import InputSpec, ModelManifest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
EXIT_ADAPTATION_FAILED = 2
CALIBRATION_BATCH = 32
PARITY_IMAGES = 4
"""Local images the export's parity check runs on (noise is far outside what adapted statistics expect)."""
ADAPTED_IMAGES_METRIC = "local_batchnorm_images"
"""Manifest metric of an adapted bundle: how many local images its BatchNorm statistics come from."""


def recalibrate_batchnorm(
    net: torch.nn.Module, batches: Sequence[torch.Tensor], *, frozen: Collection[str] = ()
) -> None:
    """Set every BatchNorm's running statistics to the exact averages over ``batches``, except the modules named
    in ``frozen`` (``named_modules`` names), whose statistics stay exactly as they are.

    A short local run moves the weights far more than the running statistics (MobileNetV3's BatchNorm momentum
    is 0.01): without this the model in eval mode scores near chance although it learned the task. A frozen
    backbone's weights did not move, so its statistics still fit them.
    """
    import torch

    named = dict(net.named_modules())
    norms = [
        m for name, m in named.items() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and name not in frozen
    ]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    counters = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the plain mean over the batches
    net.train()
    for name in frozen:
        named[name].eval()  # in train mode a forward pass would move their running statistics
    with torch.no_grad():
        for batch in batches:
            if len(batch) > 1:
                net(batch)
    for norm, momentum, counter in zip(norms, momenta, counters, strict=True):
        norm.momentum = momentum
        if counter is not None:
            norm.num_batches_tracked = counter  # still counts training steps, not calibration passes
    net.eval()


def calibration_batches(images: Sequence[np.ndarray], spec: InputSpec, device: str = "cpu") -> list[torch.Tensor]:
    """Decoded images preprocessed as the edge serves them, in batches for ``recalibrate_batchnorm``."""
    import torch

    return [
        torch.from_numpy(to_tensor(list(images[start : start + CALIBRATION_BATCH]), spec, np.dtype(np.float32))[0]).to(
            device
        )
        for start in range(0, len(images), CALIBRATION_BATCH)
    ]


def adapt_bundle(bundle_dir: Path, image_files: Sequence[Path], out_dir: Path) -> ModelManifest:
    """Export ``bundle_dir``'s model with BatchNorm statistics computed on ``image_files`` into ``out_dir``.

    Unreadable images are skipped and logged; fewer than two readable ones (one image has no variance) is a
    ``TrainingError``, as is a model without BatchNorm statistics.
    """
    import safetensors.numpy

    from exporters.common import state_dict_arrays
    from exporters.rebuild import rebuild_and_export, rebuild_module
    from schemas.tensors import contiguous

    manifest = read_model_manifest({MANIFEST_FILE: bundle_dir / MANIFEST_FILE})
    weights = bundle_dir / WEIGHTS_FILE
    if not any(key.endswith("running_mean") for key in safetensors.numpy.load_file(str(weights))):
        raise TrainingError(f"{manifest.name} v{manifest.version} has no BatchNorm statistics to adapt")
    images = []
    for path in image_files:
        try:
            images.append(decode_image(path.read_bytes(), source=str(path)))
        except (OSError, ImageError) as exc:
            log.warning("calibration image skipped", extra={"path": str(path), "error": str(exc)})
    if len(images) < 2:
        raise TrainingError(
            f"{manifest.name} v{manifest.version}: {len(images)} readable of {len(image_files)} local images; "
            "BatchNorm statistics need at least 2"
        )
    net = rebuild_module(manifest, weights)
    batches = calibration_batches(images, manifest.input)
    recalibrate_batchnorm(net, batches)
    adapted = out_dir.with_name(f".{out_dir.name}.{WEIGHTS_FILE}")
    safetensors.numpy.save_file({k: contiguous(v) for k, v in state_dict_arrays(net).items()}, str(adapted))
    try:
        described = manifest.model_copy(update={"metrics": {**manifest.metrics, ADAPTED_IMAGES_METRIC: len(images)}})
        return rebuild_and_export(described, adapted, out_dir, parity_input=batches[0][:PARITY_IMAGES].numpy())
    finally:
        adapted.unlink(missing_ok=True)


def adapt_in_child(
    bundle_dir: Path, image_files: Sequence[Path], out_dir: Path, *, threads: int = 1, timeout_s: float = 600
) -> ModelManifest:
    """``adapt_bundle`` in a child process; ``ExportError`` naming the model on any failure."""
    from exporters.child import run_worker

    result = run_worker(
        "edge.training.batchnorm",
        {"bundle": str(bundle_dir), "images": [str(p) for p in image_files], "out_dir": str(out_dir)},
        what=f"local BatchNorm statistics for {bundle_dir}",
        timeout_s=timeout_s,
        threads=threads,
    )
    return ModelManifest.model_validate(result)


def main(argv: list[str]) -> int:
    from runtime.processes import die_with_parent

    die_with_parent()
    if len(argv) != 1:
        print("error: usage: python -m edge.training.batchnorm '<json request>'", file=sys.stderr)
        return EXIT_ADAPTATION_FAILED
    request = json.loads(argv[0])
    try:
        adapted = adapt_bundle(Path(request["bundle"]), [Path(p) for p in request["images"]], Path(request["out_dir"]))
    except FedinspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ADAPTATION_FAILED
    print(adapted.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
