"""``fedinspect bench edge``: images/s end to end through the edge's HTTP source vs the bare pipeline, one run.

Same models, same encoded images, same machine: the bare side decodes and runs classify-then-detect in-process;
the HTTP side POSTs the bytes to a running edge app (uvicorn on loopback) that also stores the image, the
prediction and the event in the SQLite buffer. Models: torchvision mobilenet_v3_small (224 px, 1 channel) and
Ultralytics yolov8n (640 px), exported by our exporters with untrained weights (speed does not depend on them);
the detector runs on every image. Target: HTTP >= 85 % of the bare pipeline.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

TARGET = 0.85


def run_edge_bench(*, seconds: float = 10.0, echo: Callable[[str], None] = print) -> float:
    import cv2
    import httpx
    import torch
    import uvicorn

    from edge.api import Readiness, create_app
    from edge.buffer import EdgeBuffer
    from edge.db import open_edge_database
    from edge.inference.classifier import Classifier
    from edge.inference.detector import Detector
    from edge.inference.images import decode_image
    from edge.inference.pipeline import InspectionPipeline
    from edge.inspection import InspectionService
    from exporters.torch_classifier import (
        build_torchvision_classifier,
        classifier_input_spec,
        export_torch_classifier,
        torchvision_architecture,
    )
    from exporters.ultralytics_env import prepare_ultralytics
    from exporters.yolo import build_yolo, export_yolo
    from fedinspect.bench_inference import alternating_rates, board_images
    from fedinspect.devbroker import free_port
    from fedinspect.synthetic import DEFECT_CLASSES
    from runtime.access import ApiRole, TokenStore
    from schemas.config import DetectorMode, HttpConfig, InferenceConfig, InspectionConfig, IntakeConfig, ReviewConfig

    prepare_ultralytics()
    torch.manual_seed(0)
    payloads = [bytes(cv2.imencode(".png", image)[1]) for image in board_images(None, 12)]
    with tempfile.TemporaryDirectory(prefix="fedinspect-bench-edge-") as scratch:
        root = Path(scratch)
        export_torch_classifier(
            build_torchvision_classifier("mobilenet_v3_small", 2, 1),
            root / "cls",
            name="pcb-classifier",
            classes=["good", "defective"],
            input_spec=classifier_input_spec(224, 1),
            architecture=torchvision_architecture("mobilenet_v3_small", 2, 1),
        )
        export_yolo(build_yolo("yolov8n.yaml", DEFECT_CLASSES), root / "det", name="pcb-detector", imgsz=640)
        config = InferenceConfig()
        pipeline = InspectionPipeline(
            Classifier.load(root / "cls" / "model.onnx", config, cache_dir=root),
            Detector.load(root / "det" / "model.onnx", config, cache_dir=root),
            InspectionConfig(detector_mode=DetectorMode.ALWAYS),
        )
        buffer = EdgeBuffer(open_edge_database(root / "buffer.db"), root / "images")
        service = InspectionService(
            pipeline,
            buffer,
            edge_id="bench",
            intake=IntakeConfig(),
            review=ReviewConfig(),
            event_topic="bench/edge/bench/events",
        )
        tokens = TokenStore(root / "api-tokens.json")
        token = tokens.add("bench", ApiRole.OPERATOR)
        app = create_app(
            service,
            readiness=lambda: Readiness(
                models={}, database_ok=True, watchdog_ok=True, watchdog_reason=None, broker_connected=False
            ),
            tokens=tokens,
            trusted_hosts=HttpConfig().trusted_hosts,
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off", ws="none"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            auth = {"Authorization": f"Bearer {token}"}  # the token check is part of what HTTP costs
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=auth) as client:
                bare_inputs, http_inputs = itertools.cycle(payloads), itertools.cycle(payloads)

                def bare() -> None:
                    pipeline.inspect(decode_image(next(bare_inputs)))

                def http() -> None:
                    response = client.post(
                        "/v1/inspect", content=next(http_inputs), headers={"content-type": "image/png"}
                    )
                    response.raise_for_status()

                http_ips, bare_ips = alternating_rates(http, bare, 1, seconds)
        finally:
            server.should_exit = True
            thread.join(10)
    ratio = http_ips / bare_ips
    echo("models: mobilenet_v3_small 224 px (1 channel) + yolov8n 640 px on every image; 640x640 PNG boards")
    echo(f"bare pipeline (decode + classify + detect):   {bare_ips:7.2f} images/s")
    echo(f"HTTP POST /v1/inspect (+ buffer + event):      {http_ips:7.2f} images/s")
    echo(f"ratio HTTP / bare: {ratio:.1%} ({'meets' if ratio >= TARGET else 'MISSES'} the {TARGET:.0%} target)")
    return ratio
