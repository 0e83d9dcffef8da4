"""Fine-tune the defect detector (Ultralytics YOLO) from the global weights on the buffer's labeled boxes.

The labeled samples become a YOLO dataset in the run's folder (training samples under train, the local holdout
under val). Ultralytics trains with its box-aware augmentation (mosaic, flips, brightness) as configured; a
90-degree-rotated copy of every training image is added when ``rotate90`` is on (Ultralytics has no such
augmentation, and on small defect sets it helps most). FedProx is applied as a proximal step after every
optimizer step, w <- w - lr * mu * (w - w_global). mAP50 and mAP50-95 on the holdout are measured before and
after with Ultralytics' validator. Runs offline with the configured thread count (``prepare_ultralytics``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.training.classifier import load_images
from edge.training.dataset import pixel_boxes, rotate90, write_data_yaml, write_yolo_sample
from edge.training.fedprox import proximal_step
from edge.training.jobs import (
    StageClock,
    TrainingError,
    TrainingJob,
    TrainingResult,
    progress_line,
)
from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest
from schemas.manifests import TEMPLATE_CROPS_ARCHITECTURE, InputSpec
from schemas.messages import TrainScope
from schemas.tensors import state_delta

log = logging.getLogger(__name__)


def write_dataset(job: TrainingJob, classes: list[str], spec: InputSpec, rng: np.random.Generator) -> tuple[Path, int]:
    """The job's samples as a YOLO dataset of the images as ``spec`` has the model see them (compared with their
    templates or alone); returns data.yaml and the number of training samples written."""
    root = job.work_dir / "dataset"
    written = 0
    for sample, image in load_images(job.train, spec):
        boxes = pixel_boxes(sample, classes)
        write_yolo_sample(root, "train", sample.sample_id, image, boxes)
        if job.augmentation.rotate90:
            turned, moved = rotate90(image, boxes, int(rng.integers(1, 4)))
            write_yolo_sample(root, "train", f"{sample.sample_id}-r90", turned, moved)
        written += 1
    for sample, image in load_images(job.holdout, spec):
        write_yolo_sample(root, "val", sample.sample_id, image, pixel_boxes(sample, classes))
    if not written:
        raise TrainingError(f"run {job.run_id}: none of the {len(job.train)} training images could be read")
    # Ultralytics builds a val loader even when it does not validate: without a holdout, point it at train.
    has_holdout = any((root / "images" / "val").glob("*.png"))
    return write_data_yaml(root, classes, val="images/val" if has_holdout else "images/train"), written


def train_detector(job: TrainingJob, report: Callable[[str], None]) -> tuple[TrainingResult, dict[str, np.ndarray]]:
    """Train as ``job`` says; returns the result and the delta (trained minus global) per state tensor. A
    template-crops model trains with its own trainer (``edge.training.crop_detector``)."""
    import torch

    if (
        read_model_manifest({MANIFEST_FILE: job.base_dir / MANIFEST_FILE}).architecture.name
        == TEMPLATE_CROPS_ARCHITECTURE
    ):
        from edge.training.crop_detector import train_crop_detector

        return train_crop_detector(job, report)

    from exporters.common import state_dict_arrays
    from exporters.rebuild import rebuild_module
    from exporters.ultralytics_env import prepare_ultralytics, unvalidated_detection_trainer

    if job.settings.train_scope != TrainScope.ALL:
        # Ultralytics trains the whole model; training it all anyway would send a delta the round did not ask for
        raise TrainingError(f"run {job.run_id}: train_scope {job.settings.train_scope.value!r} is for classifiers")
    clock = StageClock()
    prepare_ultralytics(job.work_dir / "ultralytics", threads=job.threads)
    from ultralytics import YOLO

    rng = np.random.default_rng(job.seed)
    manifest = read_model_manifest({MANIFEST_FILE: job.base_dir / MANIFEST_FILE})
    net = rebuild_module(manifest, job.base_dir / WEIGHTS_FILE)
    base_state = state_dict_arrays(net)
    data_yaml, num_examples = write_dataset(job, list(manifest.classes), manifest.input, rng)
    has_holdout = any((job.work_dir / "dataset" / "images" / "val").glob("*.png"))
    imgsz = manifest.input.width
    common: dict[str, Any] = {"imgsz": imgsz, "device": job.device, "workers": 0, "plots": False, "verbose": False}

    def checkpoint(module: torch.nn.Module, name: str) -> Path:
        path = job.work_dir / name
        torch.save({"model": module, "train_args": {}}, path)  # our own file, read back with weights_only
        return path

    def evaluate(path: Path) -> dict[str, float]:
        if not has_holdout:
            return {}
        metrics = YOLO(str(path)).val(data=str(data_yaml), split="val", batch=job.settings.batch_size, **common)
        return {"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map)}

    base_checkpoint = checkpoint(net, "base.pt")
    clock.lap("prepare")
    before = evaluate(base_checkpoint)
    clock.lap("score")
    settings = job.settings
    mu = settings.proximal_mu
    anchors: list[torch.Tensor] = []
    stopped_early = False
    epochs_done = 0

    def on_train_start(trainer: Any) -> None:
        anchors.extend(p.detach().clone() for p in trainer.model.parameters())

    def on_train_batch_end(trainer: Any) -> None:
        proximal_step(trainer.model.parameters(), anchors, trainer.optimizer.param_groups[0]["lr"], mu)

    def on_train_epoch_end(trainer: Any) -> None:
        nonlocal stopped_early, epochs_done
        epochs_done = trainer.epoch + 1
        losses = getattr(trainer, "tloss", None)  # a tensor, or a dict of named losses in newer Ultralytics
        values = losses.values() if isinstance(losses, dict) else [] if losses is None else [losses.sum()]
        loss = sum(float(v.sum()) if hasattr(v, "sum") else float(v) for v in values) if values else float("nan")
        report(progress_line(epochs_done, settings.local_epochs, loss=loss))
        if time.monotonic() - clock.started > job.deadline_s and epochs_done < settings.local_epochs:
            stopped_early = True
            trainer.stop = True

    model = YOLO(str(base_checkpoint))
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.train(
        trainer=unvalidated_detection_trainer(),
        data=str(data_yaml),
        epochs=settings.local_epochs,
        batch=settings.batch_size,
        optimizer="AdamW",
        lr0=settings.learning_rate,
        project=str(job.work_dir / "runs"),
        name="train",
        exist_ok=True,
        amp=False,
        val=False,
        warmup_epochs=0,
        close_mosaic=0,
        seed=job.seed,
        deterministic=True,
        mosaic=job.augmentation.mosaic,
        fliplr=0.5 if job.augmentation.horizontal_flip else 0.0,
        flipud=0.5 if job.augmentation.vertical_flip else 0.0,
        hsv_v=job.augmentation.brightness,
        hsv_h=0.0,
        hsv_s=0.0,
        **common,
    )
    trainer = model.trainer
    trained_net = trainer.ema.ema if getattr(trainer, "ema", None) is not None else trainer.model
    trained = state_dict_arrays(trained_net.float().cpu())
    clock.lap("train")
    after = evaluate(checkpoint(trained_net, "trained.pt"))
    clock.lap("score")
    delta = state_delta(trained, base_state)
    result = clock.result(
        job.run_id,
        num_examples=num_examples,
        epochs=epochs_done,
        stopped_early=stopped_early,
        before=before,
        after=after,
    )
    return result, delta
