"""Ultralytics run our way: the unvalidated trainer trains exactly as the stock one, without its validation passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.models import write_shapes_dataset

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")


def _train(work: Path, data: Path, trainer: type[Any] | None) -> tuple[dict[str, Any], int]:
    from exporters.ultralytics_env import prepare_ultralytics

    prepare_ultralytics(work / "ultralytics", threads=2)
    from ultralytics import YOLO

    validations = []
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_val_start", lambda validator: validations.append(validator))
    model.train(
        trainer=trainer,
        data=str(data),
        epochs=2,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        project=str(work / "runs"),
        name="run",
        exist_ok=True,
        plots=False,
        val=False,
        amp=False,
        seed=0,
        deterministic=True,
        warmup_epochs=0,
    )
    return model.trainer.ema.ema.state_dict(), len(validations)


def test_the_unvalidated_trainer_skips_validation_and_trains_the_same_weights(tmp_path: Path) -> None:
    from exporters.ultralytics_env import unvalidated_detection_trainer

    data = write_shapes_dataset(tmp_path / "shapes", train=8, val=4)
    stock, stock_validations = _train(tmp_path / "stock", data, None)
    ours, our_validations = _train(tmp_path / "ours", data, unvalidated_detection_trainer())
    # Ultralytics validates twice even with val=False (last epoch, then best.pt); ours never does
    assert stock_validations == 2
    assert our_validations == 0
    assert stock.keys() == ours.keys()
    for key, tensor in stock.items():
        assert torch.equal(tensor, ours[key]), key
