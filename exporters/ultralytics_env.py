"""Run Ultralytics offline and safely: no downloads, no pip installs at run time, no pickle, no writes to $HOME.

Call ``prepare_ultralytics`` before the first ``import ultralytics`` in a process. It sets Ultralytics' offline
switches, points its settings directory at ``config_dir`` (default: a folder in the system temp dir), places a
font there so plotting never tries to download Arial.ttf, and turns on ``ULTRALYTICS_SAFE_LOAD`` so every .pt
checkpoint is read with ``torch.load(weights_only=True)`` against Ultralytics' allow-list of model classes.
``unvalidated_detection_trainer`` trains without the validation passes Ultralytics runs even with ``val=False``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_FONT_NAME = "Arial.ttf"


def prepare_ultralytics(config_dir: Path | None = None, *, threads: int | None = None) -> Path:
    """Configure the environment for Ultralytics; returns its settings directory.

    ``threads`` sets the CPU thread count Ultralytics applies on every train / predict (it otherwise takes
    cpu_count - 1, which is 1 on a 2-core box).
    """
    directory = Path(config_dir or Path(tempfile.gettempdir()) / "fedinspect-ultralytics")
    (directory / "Ultralytics").mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "false")
    os.environ["YOLO_CONFIG_DIR"] = str(directory)
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    os.environ.setdefault("MPLCONFIGDIR", str(directory / "matplotlib"))
    font = directory / "Ultralytics" / _FONT_NAME
    if not font.exists():
        bundled = _bundled_font()
        if bundled is not None:
            shutil.copyfile(bundled, font)
    if threads is not None:
        set_ultralytics_threads(threads)
    return directory


def set_ultralytics_threads(threads: int) -> None:
    """Make Ultralytics use ``threads`` CPU threads (it resets torch's count on every call)."""
    import torch
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


def unvalidated_detection_trainer() -> type[Any]:
    """Ultralytics' detection trainer without its own validation: pass it as ``YOLO.train(trainer=...)``.

    Even with ``val=False`` Ultralytics validates after the last epoch and again on best.pt, two passes over the
    val split whose figures nobody here reads (callers score the model they keep themselves); on a CPU edge that
    is a fifth of a short fine-tuning run. Training itself is unchanged: the same batches, steps and EMA.
    """
    from ultralytics.models.yolo.detect import DetectionTrainer

    class UnvalidatedDetectionTrainer(DetectionTrainer):  # type: ignore[misc]
        def validate(self) -> tuple[dict[str, float], None]:
            # Ultralytics' own convention for "not validated": the zeroed metrics it logs, fitness None
            return self.metrics, None

        def final_eval(self) -> None:
            return None

    return UnvalidatedDetectionTrainer


def _bundled_font() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    candidate = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return candidate if candidate.is_file() else None
