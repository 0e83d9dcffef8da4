"""Hot-swap of a new global model: atomic under load, gated by the local holdout, reversible."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.buffer import EdgeBuffer
from edge.buffer.labels import is_holdout
from edge.db import open_edge_database
from edge.inference.classifier import Classifier
from edge.inference.detector import Detector
from edge.inference.errors import ModelLoadError
from edge.inference.pipeline import InspectionPipeline
from edge.inference.templates import Template
from edge.model_records import SERVING_RECORD, served_model_file
from edge.swap import ModelSwapper
from schemas.bundle import MODEL_FILE
from schemas.config import InferenceConfig, InspectionConfig
from schemas.manifests import Task
from tests.support.buffers import blob_split_key, import_labeled_blobs
from tests.support.models import CLASSIFIER_SIZE, blob_samples, small_cnn
from tests.support.processes import png

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")


def export(module: Any, out: Path, version: int, name: str = "pcb-classifier") -> Path:
    from exporters.torch_classifier import classifier_input_spec, export_torch_classifier

    export_torch_classifier(
        module,
        out,
        name=name,
        classes=["good", "defective"],
        input_spec=classifier_input_spec(CLASSIFIER_SIZE, 1),
        version=version,
        parent=None if version == 0 else version - 1,
    )
    return out / MODEL_FILE


def labeled_buffer(tmp_path: Path, *, seed: int, template: Template | None = None) -> EdgeBuffer:
    """60 imported labeled blob images; with ``template``, every second one stored with it."""
    buffer = EdgeBuffer(open_edge_database(tmp_path / "buffer.db"), tmp_path / "images")
    import_labeled_blobs(buffer, 60, seed=seed, template=template)
    return buffer


@pytest.fixture
def setup(classifier_bundle: Path, tmp_path: Path) -> tuple[InspectionPipeline, EdgeBuffer, ModelSwapper]:
    pipeline = InspectionPipeline(
        Classifier.load(classifier_bundle / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path),
        None,
        InspectionConfig(),
    )
    buffer = labeled_buffer(tmp_path, seed=91)
    swapper = ModelSwapper(pipeline, buffer, InferenceConfig(), cache_dir=tmp_path, tolerance=0.02)
    return pipeline, buffer, swapper


def test_the_holdout_follows_the_split_keys_and_is_stable(
    setup: tuple[InspectionPipeline, EdgeBuffer, ModelSwapper],
) -> None:
    _, buffer, _ = setup
    holdout = {s.sample_id for s in buffer.labels.labeled_samples(holdout=True)}
    training = {s.sample_id for s in buffer.labels.labeled_samples(holdout=False)}
    assert len(holdout) + len(training) == 60 and not holdout & training
    assert len(holdout) == sum(is_holdout(blob_split_key(91, index)) for index in range(60)) >= 4
    assert {s.sample_id for s in buffer.labels.labeled_samples(holdout=True)} == holdout


def test_a_worse_model_is_kept_out_and_an_equal_one_swapped_in_and_rolled_back(
    setup: tuple[InspectionPipeline, EdgeBuffer, ModelSwapper], trained_classifier: Any, tmp_path: Path
) -> None:
    pipeline, _, swapper = setup
    torch.manual_seed(123)
    worse = swapper.consider(export(small_cnn(), tmp_path / "random", version=1))
    assert not worse.swapped and worse.score_before is not None and worse.score_after is not None
    assert worse.score_after < worse.score_before - 0.02 and "regresses on the local holdout" in worse.reason
    assert pipeline.model_versions == {"pcb-classifier": 0}

    same = swapper.consider(export(trained_classifier.module, tmp_path / "retrained", version=2))
    assert same.swapped and same.from_version == 0 and same.to_version == 2
    assert pipeline.model_versions == {"pcb-classifier": 2}
    back = swapper.rollback(Task.CLASSIFY)
    assert back.to_version == 0 and pipeline.model_versions == {"pcb-classifier": 0}
    with pytest.raises(ModelLoadError, match="no earlier classify model"):
        swapper.rollback(Task.CLASSIFY)
    with pytest.raises(ModelLoadError, match="is model line 'other-line'"):
        swapper.consider(export(trained_classifier.module, tmp_path / "other", version=0, name="other-line"))


def test_the_served_model_is_recorded_for_a_restart(
    setup: tuple[InspectionPipeline, EdgeBuffer, ModelSwapper], trained_classifier: Any, tmp_path: Path
) -> None:
    pipeline, buffer, _ = setup
    models = tmp_path / "models"
    swapper = ModelSwapper(pipeline, buffer, InferenceConfig(), cache_dir=tmp_path, tolerance=0.02, models_dir=models)
    assert served_model_file(models, "pcb-classifier", 0) is None, "nothing served yet: the configured model"
    torch.manual_seed(123)
    swapper.consider(export(small_cnn(), tmp_path / "random", version=1))  # kept out: not recorded
    assert served_model_file(models, "pcb-classifier", 0) is None
    version_2 = export(trained_classifier.module, tmp_path / "v2", version=2)
    assert swapper.consider(version_2).swapped
    assert served_model_file(models, "pcb-classifier", 0) == version_2.resolve()
    assert served_model_file(models, "pcb-classifier", 2) is None, "a configured model as new wins"
    swapper.rollback(Task.CLASSIFY)
    assert served_model_file(models, "pcb-classifier", 0) is None, "rolled back to version 0"
    (models / "pcb-classifier" / SERVING_RECORD).write_text("{not json")
    assert served_model_file(models, "pcb-classifier", 0) is None, "an unreadable record falls back, no crash"


def test_swaps_under_load_never_fail_a_request(
    setup: tuple[InspectionPipeline, EdgeBuffer, ModelSwapper], trained_classifier: Any, tmp_path: Path
) -> None:
    pipeline, _, _ = setup
    alternate = Classifier.load(
        export(trained_classifier.module, tmp_path / "v1", version=1), InferenceConfig(), cache_dir=tmp_path
    )
    original = pipeline.classifier
    image = np.zeros((64, 64), np.uint8)
    seen: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def inspect() -> None:
        while not stop.is_set():
            try:
                seen.add(pipeline.inspect(image).model_versions["pcb-classifier"])
            except BaseException as exc:  # the assertion below reports it
                errors.append(exc)
                return

    workers = [threading.Thread(target=inspect) for _ in range(3)]
    for worker in workers:
        worker.start()
    for index in range(40):
        pipeline.replace_classifier(alternate if index % 2 == 0 else original)
    stop.set()
    for worker in workers:
        worker.join(10)
    assert errors == [] and seen <= {0, 1} and seen


def test_a_detector_comparing_with_templates_is_scored_on_the_samples_that_have_one(
    classifier_bundle: Path, detector_bundle: Path, composite_detector_bundle: Path, tmp_path: Path
) -> None:
    golden = blob_samples(1, seed=94)[0][0]
    buffer = labeled_buffer(tmp_path, seed=93, template=Template("board-a", png(golden), golden))

    def swapper(templates_dir: Path | None) -> ModelSwapper:
        config = InferenceConfig()
        pipeline = InspectionPipeline(
            Classifier.load(classifier_bundle / MODEL_FILE, config, cache_dir=tmp_path),
            Detector.load(detector_bundle / MODEL_FILE, config, cache_dir=tmp_path),
            InspectionConfig(templates_dir=templates_dir),
        )
        return ModelSwapper(pipeline, buffer, config, cache_dir=tmp_path, tolerance=1.0)

    with pytest.raises(ModelLoadError, match="compares each image with its golden template, and this edge has no"):
        swapper(None).consider(composite_detector_bundle / MODEL_FILE)
    decision = swapper(tmp_path / "templates").consider(composite_detector_bundle / MODEL_FILE)
    with_template = [s for s in buffer.labels.labeled_samples(holdout=True) if s.template_path is not None]
    assert 0 < decision.holdout_size == len(with_template) < len(buffer.labels.labeled_samples(holdout=True))
    assert decision.swapped and decision.score_before is not None and decision.score_after is not None
