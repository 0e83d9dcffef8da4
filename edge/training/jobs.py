"""What the edge agent hands its training process, and what it gets back (JSON files in the run's folder).

The agent writes ``job.json`` (a ``TrainingJob``); ``python -m edge.training.worker job.json`` trains and writes
``delta.safetensors`` and ``result.json`` (a ``TrainingResult``), printing progress as JSON lines on stdout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from schemas.base import ContractModel
from schemas.config import AugmentationConfig
from schemas.errors import FedinspectError
from schemas.manifests import Task
from schemas.messages import TrainingConfig

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
DELTA_FILE = "delta.safetensors"
PROGRESS_KEY = "progress"


class TrainingError(FedinspectError):
    """A training run ended without a result (no usable samples, a model that does not fit, a time limit, the agent
    stopping); the message says why. ``interrupted``: stopped from outside, not failed."""

    def __init__(self, message: str, *, interrupted: bool = False) -> None:
        self.interrupted = interrupted
        super().__init__(message)


class TrainingSample(ContractModel):
    """One labeled image: where it is and what a person (or an import) says it shows."""

    sample_id: str = Field(title="Sample", description="Buffer sample id.")
    image: Path = Field(title="Image", description="The stored image file.")
    verdict: str = Field(title="Verdict", description="good or defective.")
    boxes: list[dict[str, Any]] = Field(
        default_factory=list, title="Boxes", description="Labeled boxes in original pixels (x1 y1 x2 y2 class_name)."
    )
    template: Path | None = Field(
        None, title="Template", description="The golden template the image was compared with, when it had one."
    )


class TrainingJob(ContractModel):
    """Everything one training run needs; the worker reads nothing else."""

    run_id: str = Field(title="Run", description="Id of the training run.")
    task: Task = Field(title="Task", description="classify or detect.")
    base_dir: Path = Field(title="Base bundle", description="Folder with manifest.json and weights.safetensors.")
    work_dir: Path = Field(title="Work folder", description="Where the worker writes its outputs.")
    train: list[TrainingSample] = Field(title="Training samples", description="Samples to train on.", min_length=1)
    holdout: list[TrainingSample] = Field(
        default_factory=list, title="Holdout", description="Scored before and after; never trained on."
    )
    settings: TrainingConfig = Field(title="Settings", description="Epochs, batch, learning rate, FedProx mu.")
    augmentation: AugmentationConfig = Field(title="Augmentation", description="Random image changes.")
    class_balancing: bool = Field(True, title="Class balancing", description="Inverse-frequency class weights.")
    defect_class: str = Field("defective", title="Defect class", description="Classifier class meaning defective.")
    labeled_kinds_only: bool = Field(
        True,
        title="Labeled kinds only",
        description="Template-crops detector: a defect kind with no labeled box in this run's training data is left "
        "out of the loss's softmax (restricted softmax, as FedRS), so a plant that has never seen a kind does not "
        "teach the shared model that it is background; that kind's weights come from the plants that label it.",
    )
    threads: int = Field(1, title="Threads", description="CPU threads.", ge=1)
    nice: int = Field(10, title="Niceness", description="Unix nice value of the training process.", ge=0, le=19)
    device: str = Field("cpu", title="Device", description="cpu or cuda.")
    seed: int = Field(0, title="Seed", description="Random seed of the run.")
    deadline_s: float = Field(title="Time budget", description="Seconds after which training stops early.", gt=0)

    def write(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / JOB_FILE
        path.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        return path


class TrainingResult(ContractModel):
    """What a finished run produced: the delta (in ``delta.safetensors``) and its facts."""

    run_id: str = Field(title="Run", description="Id of the training run.")
    num_examples: int = Field(title="Examples", description="Training samples used.", ge=1)
    epochs: int = Field(title="Epochs", description="Epochs completed.", ge=0)
    stopped_early: bool = Field(False, title="Stopped early", description="The time budget ended training.")
    seconds: float = Field(title="Seconds", description="Wall time of the run.", ge=0)
    metrics_before: dict[str, float] = Field(
        default_factory=dict, title="Before", description="Holdout metrics of the base model."
    )
    metrics_after: dict[str, float] = Field(
        default_factory=dict, title="After", description="Holdout metrics of the trained model."
    )
    stage_seconds: dict[str, float] = Field(
        default_factory=dict,
        title="Seconds per stage",
        description="prepare (model rebuild, images, dataset), score (holdout before and after), train (the epochs).",
    )


class StageClock:
    """Adds up a run's wall time per stage: each ``lap`` charges the time since the previous one to a stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def result(
        self,
        run_id: str,
        *,
        num_examples: int,
        epochs: int,
        stopped_early: bool,
        before: dict[str, float],
        after: dict[str, float],
    ) -> TrainingResult:
        """The facts of a run that ends now."""
        return TrainingResult(
            run_id=run_id,
            num_examples=num_examples,
            epochs=epochs,
            stopped_early=stopped_early,
            seconds=time.monotonic() - self.started,
            metrics_before=before,
            metrics_after=after,
            stage_seconds=self.seconds,
        )


def progress_line(epoch: int, epochs: int, **values: float) -> str:
    """One progress report of the worker (a JSON line on stdout)."""
    return json.dumps({PROGRESS_KEY: {"epoch": epoch, "epochs": epochs, **values}})
