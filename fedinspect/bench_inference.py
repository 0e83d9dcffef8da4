"""``fedinspect bench inference``: images/s of our ONNX Runtime inferencers vs the source frameworks, one run.

Same weights, same decoded images, same thread count on both sides:
- classifier: ``edge.inference.Classifier.predict_batch`` (preprocess + ONNX Runtime + softmax) vs torch eager
  ``module(x).softmax()`` on an already preprocessed tensor (torch is not charged for preprocessing);
- detector: ``edge.inference.Detector.predict_batch`` (letterbox + ONNX Runtime + decode + NMS) vs Ultralytics
  ``YOLO.predict`` on the same images, same confidence and IoU thresholds.
Models: torchvision mobilenet_v3_small (2 classes, 1 channel: PCB scans are grayscale) and Ultralytics yolov8n
(6 DeepPCB classes), at 320 and 640 px, batch 1 and 8. Images: generated PCB boards, or a folder via --images.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.ultralytics_env import prepare_ultralytics

_BLOCK = 5
CLASSIFIER_TARGET = 3.0
DETECTOR_TARGET = 1.5


@dataclass(frozen=True)
class BenchRow:
    model: str
    size: int
    batch: int
    ours_ips: float
    reference_ips: float

    @property
    def ratio(self) -> float:
        return self.ours_ips / self.reference_ips


def board_images(folder: Path | None, count: int) -> list[np.ndarray]:
    """Up to ``count`` images from ``folder``, or generated 640x640 grayscale PCB boards."""
    import cv2

    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:count]
        if not files:
            raise FileNotFoundError(f"{folder}: no .png/.jpg/.bmp images")
        loaded: list[np.ndarray] = []
        for path in files:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise FileNotFoundError(f"{path}: not a readable image")
            loaded.append(image)
        return loaded
    from fedinspect.synthetic import PlantStyle, make_board

    rng = np.random.default_rng(7)
    return [make_board(rng, 640, PlantStyle(), 4).defective for _ in range(count)]


def alternating_rates(
    ours: Callable[[], Any], reference: Callable[[], Any], images_per_call: int, seconds: float
) -> tuple[float, float]:
    """Images/s of both sides: medians of per-call rates, measured in alternating blocks of calls.

    Alternating blocks spread drift (thermal, other load) over both sides; the first call of each block is not
    counted, so neither side pays for the other's threads still spinning down.
    """
    rates: dict[str, list[float]] = {"ours": [], "reference": []}
    started = time.perf_counter()
    while min(len(r) for r in rates.values()) < 8 or time.perf_counter() - started < 2 * seconds:
        for side, run in (("ours", ours), ("reference", reference)):
            for call in range(_BLOCK):
                t0 = time.perf_counter()
                run()
                if call:
                    rates[side].append(images_per_call / (time.perf_counter() - t0))
    return statistics.median(rates["ours"]), statistics.median(rates["reference"])


def _batches(images: Sequence[np.ndarray], batch: int) -> Callable[[], list[np.ndarray]]:
    state = {"next": 0}

    def take() -> list[np.ndarray]:
        start = state["next"]
        state["next"] = (start + batch) % max(1, len(images) - batch + 1)
        return list(images[start : start + batch])

    return take


def run_inference_bench(
    *,
    sizes: Sequence[int] = (320, 640),
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    seconds: float = 3.0,
    images_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[BenchRow]:
    threads = threads or os.cpu_count() or 1
    prepare_ultralytics(threads=threads)
    import torch

    torch.set_num_threads(threads)
    images = board_images(images_dir, 16)
    echo(
        f"threads: {threads} (ONNX Runtime intra-op = torch = Ultralytics); images: {len(images)} "
        f"{images[0].shape[1]}x{images[0].shape[0]}; {seconds:g} s per measurement"
    )
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="fedinspect-bench-") as scratch:
        for size in sizes:
            rows += _classifier_rows(Path(scratch) / f"cls{size}", images, size, batches, threads, seconds)
            rows += _detector_rows(Path(scratch) / f"det{size}", images, size, batches, threads, seconds)
    echo(f"{'model':<28}{'px':>5}{'batch':>7}{'ours img/s':>13}{'reference img/s':>18}{'ratio':>8}")
    for row in rows:
        echo(
            f"{row.model:<28}{row.size:>5}{row.batch:>7}{row.ours_ips:>13.1f}{row.reference_ips:>18.1f}"
            f"{row.ratio:>7.2f}x"
        )
    for label, prefix, target in (
        ("classifier", "mobilenet", CLASSIFIER_TARGET),
        ("detector", "yolov8n", DETECTOR_TARGET),
    ):
        batch1 = [row.ratio for row in rows if row.model.startswith(prefix) and row.batch == 1]
        if batch1:
            verdict = "meets" if min(batch1) >= target else "MISSES"
            echo(f"{label} at batch 1: {min(batch1):.2f}x-{max(batch1):.2f}x, {verdict} the {target:g}x target")
    return rows


def _predict(inferencer: Any, take: Callable[[], list[np.ndarray]]) -> None:
    inferencer.predict_batch(take())


def _cpu_config(threads: int) -> Any:
    from schemas.config import CpuProviderConfig, InferenceConfig

    return InferenceConfig(providers=[CpuProviderConfig(kind="cpu", intra_op_threads=threads)])


def _classifier_rows(
    out_dir: Path, images: list[np.ndarray], size: int, batches: Sequence[int], threads: int, seconds: float
) -> list[BenchRow]:
    import torch

    from edge.inference.classifier import Classifier
    from exporters.torch_classifier import (
        build_torchvision_classifier,
        classifier_input_spec,
        export_torch_classifier,
        torchvision_architecture,
    )

    torch.manual_seed(0)
    module = build_torchvision_classifier("mobilenet_v3_small", 2, 1).eval()
    export_torch_classifier(
        module,
        out_dir,
        name="bench-classifier",
        classes=["good", "defective"],
        input_spec=classifier_input_spec(size, 1),
        architecture=torchvision_architecture("mobilenet_v3_small", 2, 1),
    )
    ours = Classifier.load(out_dir / "model.onnx", _cpu_config(threads), cache_dir=out_dir)
    rows = []
    for batch in batches:
        take = _batches(images, batch)
        tensor = torch.from_numpy(ours.preprocess(take())[0])

        def reference(tensor: torch.Tensor = tensor) -> None:
            with torch.inference_mode():
                module(tensor).softmax(dim=1)

        ours_ips, reference_ips = alternating_rates(functools.partial(_predict, ours, take), reference, batch, seconds)
        rows.append(BenchRow("mobilenet_v3_small (cls)", size, batch, ours_ips, reference_ips))
    return rows


def _detector_rows(
    out_dir: Path, images: list[np.ndarray], size: int, batches: Sequence[int], threads: int, seconds: float
) -> list[BenchRow]:
    import cv2
    import torch
    from ultralytics import YOLO

    from edge.inference.detector import Detector
    from exporters.ultralytics_env import set_ultralytics_threads
    from exporters.yolo import build_yolo, export_yolo
    from fedinspect.synthetic import DEFECT_CLASSES

    torch.manual_seed(0)
    net = build_yolo("yolov8n.yaml", DEFECT_CLASSES)
    export_yolo(net, out_dir, name="bench-detector", imgsz=size)
    ours = Detector.load(out_dir / "model.onnx", _cpu_config(threads), cache_dir=out_dir)
    reference_model = YOLO("yolov8n.yaml")
    reference_model.model = net
    colour = [cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image for image in images]
    rows = []
    for batch in batches:
        take_ours = _batches(images, batch)
        take_reference = _batches(colour, batch)

        def reference(take_reference: Callable[[], list[np.ndarray]] = take_reference) -> None:
            set_ultralytics_threads(threads)
            reference_model.predict(
                take_reference(),
                imgsz=size,
                conf=ours.confidence_threshold,
                iou=ours.iou_threshold,
                device="cpu",
                verbose=False,
                rect=False,
            )

        ours_ips, reference_ips = alternating_rates(
            functools.partial(_predict, ours, take_ours), reference, batch, seconds
        )
        rows.append(BenchRow("yolov8n (det)", size, batch, ours_ips, reference_ips))
    return rows
