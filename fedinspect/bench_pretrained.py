"""``fedinspect bench pretrained``: what the packaged ImageNet backbone buys on few labels, and what head-only costs.

One generated plant (``fedinspect.demo_data.synthetic_plants``: each board gives its template, labeled good, and its
defective copy); the first N training images are the labels. Each arm is fine-tuned by the edge's own trainer
(``edge.training.classifier.train_classifier``, same epochs, batch, learning rate and seed) from a single-channel
MobileNetV2 version 0:

- random: torchvision's random initialization;
- pretrained: the packaged ImageNet backbone, every tensor trained;
- pretrained, head only: the same with ``train_scope: head``.

Scored on the plant's test boards plus boards of an unseen style (the trainer's holdout metrics, after its
BatchNorm recalibration, as the edge reports them), and the update each arm would send is encoded as the edge
encodes it (``schemas.tensors.encode_tensors``) to count its bytes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.manifests import TensorEncoding

Echo = Callable[[str], None]
ENCODINGS: list[tuple[str, TensorEncoding]] = [
    ("fp32+zstd", TensorEncoding(dtype="fp32", compression="zstd")),
    ("fp16+zstd", TensorEncoding(dtype="fp16", compression="zstd")),
    ("int8/channel+zstd", TensorEncoding(dtype="int8", quantization="per_channel", compression="zstd")),
]
ARMS = (("random", False, "all"), ("pretrained", True, "all"), ("pretrained-head", True, "head"))


@dataclass(frozen=True)
class PretrainedBenchSettings:
    work_dir: Path
    labels: tuple[int, ...] = (20, 50)
    epochs: int = 5
    size: int = 128
    test_boards: int = 30
    learning_rate: float = 1e-3
    threads: int = 2
    seed: int = 0


def run_pretrained_bench(settings: PretrainedBenchSettings, echo: Echo) -> dict[str, Any]:
    """Run every arm for every label count; print a table and write ``results.json`` into the work folder."""
    import torch

    from edge.training.classifier import train_classifier
    from edge.training.jobs import TrainingJob
    from fedinspect.bench_fl import _samples
    from fedinspect.demo_data import synthetic_plants
    from fedinspect.seed_models import initial_classifier
    from schemas.config import AugmentationConfig
    from schemas.messages import TrainingConfig
    from schemas.tensors import encode_tensors

    torch.set_num_threads(settings.threads)
    work = settings.work_dir
    shutil.rmtree(work, ignore_errors=True)
    boards = (max(settings.labels) + 1) // 2
    data = synthetic_plants(
        1, train_boards=boards, test_boards=settings.test_boards, size=settings.size, seed=settings.seed
    )
    plant = data.plants[0]
    # template and defective copy of a board are neighbours: the first N images are N / 2 boards, balanced
    train_all = _samples(plant.train, work / "images" / "train", data.classes)
    holdout = _samples(plant.test + data.unseen, work / "images" / "holdout", data.classes)
    echo(
        f"pretrained bench: {settings.size} px boards, labels {', '.join(map(str, settings.labels))}, held out "
        f"{len(holdout)} images ({len(data.unseen)} of an unseen style); {settings.epochs} epochs, batch 16, "
        f"lr {settings.learning_rate:g}, {settings.threads} threads"
    )
    bundles = {}
    for pretrained in (False, True):
        bundle = work / ("v0-pretrained" if pretrained else "v0-random")
        initial_classifier(
            bundle,
            name="bench-classifier",
            arch="mobilenet_v2",
            size=settings.size,
            seed=settings.seed,
            pretrained=pretrained,
        )
        bundles[pretrained] = bundle
    rows: list[dict[str, Any]] = []
    for labels in settings.labels:
        for arm, pretrained, scope in ARMS:
            job = TrainingJob(
                run_id=f"{arm}-{labels}",
                task="classify",
                base_dir=bundles[pretrained],
                work_dir=work / "runs" / f"{arm}-{labels}",
                train=train_all[:labels],
                holdout=holdout,
                settings=TrainingConfig(
                    local_epochs=settings.epochs, batch_size=16, learning_rate=settings.learning_rate, train_scope=scope
                ),
                # the boards' defects are small: no rotations or brightness changes, as in bench fl
                augmentation=AugmentationConfig(rotate90=False, vertical_flip=False, brightness=0.0),
                threads=settings.threads,
                deadline_s=24 * 3600,
                seed=settings.seed,
            )
            started = time.monotonic()
            result, delta = train_classifier(job, lambda _line: None)
            row: dict[str, Any] = {
                "arm": arm,
                "labels": labels,
                "epochs": result.epochs,
                "accuracy_before": result.metrics_before["accuracy"],
                "accuracy_after": result.metrics_after["accuracy"],
                "loss_after": result.metrics_after["loss"],
                "seconds": time.monotonic() - started,
                "update_bytes": {name: len(encode_tensors(delta, encoding)) for name, encoding in ENCODINGS},
            }
            rows.append(row)
            echo(
                f"  {arm:<16} {labels:>3} labels: accuracy {row['accuracy_before']:.3f} -> {row['accuracy_after']:.3f}"
                f" (loss {row['loss_after']:.3f}, {row['seconds']:.0f} s); update "
                + ", ".join(f"{name} {size / 1e6:.3f} MB" for name, size in row["update_bytes"].items())
            )
    results = {"settings": {k: str(v) for k, v in vars(settings).items()}, "rows": rows}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
