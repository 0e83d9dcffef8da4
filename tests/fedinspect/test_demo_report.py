"""The demo report's scorer: a model is scored the way an edge serves it (with that plant's BatchNorm statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedinspect.demo_data import LabeledImage
from tests.support.models import CLASSIFIER_SIZE, blob_samples

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")


def test_the_report_scores_a_model_as_the_edge_serves_it_after_local_batchnorm(tmp_path: Path) -> None:
    from edge.inference.classifier import Classifier
    from edge.training.batchnorm import adapt_bundle
    from fedinspect.demo_report import ClassifierScorer
    from fedinspect.seed_models import initial_classifier
    from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, read_model_manifest
    from schemas.config import InferenceConfig

    bundle = initial_classifier(
        tmp_path / "v0", name="pcb-classifier", arch="mobilenet_v3_small", size=CLASSIFIER_SIZE, seed=2
    )
    pixels, labels = blob_samples(40, seed=8)
    lit = np.clip(pixels.astype(np.float32) * 2.0 + 30, 0, 255).astype(np.uint8)  # one plant's lighting
    images = [
        LabeledImage(f"i{n}", image, bool(label), []) for n, (image, label) in enumerate(zip(lit, labels, strict=True))
    ]
    files = []
    for item in images[:24]:
        files.append(tmp_path / f"{item.name}.png")
        cv2.imwrite(str(files[-1]), item.image)
    adapt_bundle(bundle, files, tmp_path / "served")
    served = Classifier.load(tmp_path / "served" / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path / "cache")

    scorer = ClassifierScorer(read_model_manifest({MANIFEST_FILE: bundle / MANIFEST_FILE}), bundle / WEIGHTS_FILE)
    import safetensors.numpy

    weights = safetensors.numpy.load_file(str(bundle / WEIGHTS_FILE))
    scored = scorer.predict(weights, images[24:], calibration=images[:24])
    defect = served.metadata.classes.index("defective")
    assert scored.tolist() == [r.class_id == defect for r in served.predict_batch([i.image for i in images[24:]])]
    truth = np.array([i.defective for i in images[24:]])
    assert scorer.accuracy(weights, images[24:], calibration=images[:24]) == float(np.mean(scored == truth))


def test_escapes_and_false_rejects_at_a_threshold_set_on_good_boards() -> None:
    from fedinspect.demo_report import InspectionRates, threshold_at_false_rejects

    good = np.array([0.1, 0.2, 0.3, 0.9] + [0.05] * 46)  # 50 good boards: 2 % of them is one board
    assert threshold_at_false_rejects(good) == 0.3  # only the 0.9 board lies above it
    assert threshold_at_false_rejects(good, rate=0.0) == 0.9
    assert threshold_at_false_rejects(np.array([0.4]), rate=1.0) == -np.inf
    truth = np.array([True, True, True, False, False, False, False])
    scores = np.array([0.95, 0.35, 0.25, 0.1, 0.2, 0.3, 0.6])
    served = InspectionRates.of(truth, scores)  # above 0.5: two of the three defective boards escape
    assert (served.escape_rate, served.false_reject_rate) == (2 / 3, 1 / 4)
    chosen = InspectionRates.of(truth, scores, threshold=0.3)
    assert (chosen.escape_rate, chosen.false_reject_rate) == (1 / 3, 1 / 4)
    assert chosen.escape_rate_at_2pct_false_rejects == 2 / 3  # at 0.6, the lowest that rejects no good board


def test_baselines_train_in_worker_processes_exactly_as_in_this_one(tmp_path: Path) -> None:
    from fedinspect.demo import DETECTOR, TEMPLATE_CROPS, DemoSettings, Line
    from fedinspect.demo_data import synthetic_plants
    from fedinspect.demo_report import Baselines, baseline_job, trained_weights
    from fedinspect.seed_models import initial_crop_detector

    data = synthetic_plants(2, train_boards=3, test_boards=1, seed=4, reference=True)
    bundle = initial_crop_detector(tmp_path / "v0", name=DETECTOR, classes=data.classes, seed=0, spec=data.proposals)
    settings = DemoSettings(rounds=1, crop_detector_local_epochs=1)
    line = Line(DETECTOR, "detect", TEMPLATE_CROPS)
    jobs = {}
    for plant in data.plants:
        files = []
        for item in plant.train:
            files.append((item, tmp_path / "data" / plant.name / f"{item.name}.png"))
            files[-1][1].parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(files[-1][1]), item.image)
            cv2.imwrite(str(files[-1][1].with_name(f"{item.name}.template.png")), item.template)
        jobs[(DETECTOR, plant.name)] = baseline_job(
            plant.name, files, bundle, settings, tmp_path / "work", line, data.classes
        )
    baselines = Baselines(jobs, workers=2)
    try:
        remote = {arm: baselines.weights(DETECTOR, arm) for arm in ("plant-a", "plant-b")}
    finally:
        baselines.close()
    for arm, weights in remote.items():  # each arm's own job, trained as this process trains it
        here = trained_weights(jobs[(DETECTOR, arm)])
        assert set(weights) == set(here) and all(np.array_equal(weights[k], here[k]) for k in here)
    assert not all(np.array_equal(remote["plant-a"][k], remote["plant-b"][k]) for k in remote["plant-a"])
