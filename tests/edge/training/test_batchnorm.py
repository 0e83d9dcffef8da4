"""Local BatchNorm statistics: a global classifier adapted to a plant's images, in process, in a child, and by the
edge service when a new global version arrives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.training.batchnorm import (
    ADAPTED_IMAGES_METRIC,
    adapt_bundle,
    adapt_in_child,
    calibration_batches,
    recalibrate_batchnorm,
)
from edge.training.jobs import TrainingError
from exporters.errors import ExportError
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, read_model_manifest
from tests.support.models import blob_samples, small_cnn

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")


def plant_images(folder: Path, count: int, *, seed: int, gain: float, offset: float) -> list[Path]:
    """Blob images under one plant's lighting (gain and offset), as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = blob_samples(count, seed=seed)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index:03d}.png"
        cv2.imwrite(str(path), np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


def weights(bundle: Path) -> dict[str, np.ndarray]:
    import safetensors.numpy

    return safetensors.numpy.load_file(str(bundle / WEIGHTS_FILE))


def decisive_head_weights(bundle: Path, out: Path) -> Path:
    """The bundle's weights with its two head layers scaled up: an untrained mobilenet head is so close to zero that
    it says 0.5 to every image whatever the statistics (measured: a 1.5e-5 difference), which would hide a swap."""
    import safetensors.numpy

    tensors = weights(bundle)
    for key in ("classifier.0.weight", "classifier.3.weight"):
        tensors[key] = tensors[key] * 30.0
    safetensors.numpy.save_file(tensors, str(out))
    return out


def test_frozen_batchnorm_layers_keep_their_statistics_while_the_others_are_recomputed() -> None:
    torch.manual_seed(0)
    net = small_cnn()
    batches = [torch.randn(8, 1, 16, 16) * 3 + 5 for _ in range(2)]
    before = {key: value.clone() for key, value in net.state_dict().items()}
    recalibrate_batchnorm(net, batches, frozen={"1"})  # small_cnn's first BatchNorm is module "1"
    after = net.state_dict()
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(after[key], before[key]), key
    assert not torch.allclose(after["4.running_mean"], before["4.running_mean"])
    assert not net.training


def test_the_adapted_bundle_normalizes_with_the_local_images_statistics(mobilenet_bundle: Path, tmp_path: Path) -> None:
    from exporters.rebuild import rebuild_module

    files = plant_images(tmp_path / "plant", 24, seed=5, gain=1.8, offset=60)
    manifest = adapt_bundle(mobilenet_bundle, files, tmp_path / "adapted")

    published = read_model_manifest({MANIFEST_FILE: mobilenet_bundle / MANIFEST_FILE})
    assert (manifest.name, manifest.version, manifest.parent) == (published.name, published.version, published.parent)
    assert manifest.metrics[ADAPTED_IMAGES_METRIC] == 24
    before, after = weights(mobilenet_bundle), weights(tmp_path / "adapted")
    # the first BatchNorm now holds the mean and (unbiased) variance of the first convolution over these 24 images,
    # computed here directly (one batch of 24: the cumulative average is the plain mean)
    net = rebuild_module(published, mobilenet_bundle / WEIGHTS_FILE).eval()
    (batch,) = calibration_batches([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files], published.input)
    with torch.no_grad():
        features = net.get_submodule("features.0.0")(batch)
    np.testing.assert_allclose(after["features.0.1.running_mean"], features.mean((0, 2, 3)).numpy(), atol=1e-4)
    np.testing.assert_allclose(
        after["features.0.1.running_var"], features.var((0, 2, 3), unbiased=True).numpy(), rtol=1e-3
    )
    assert not np.allclose(before["features.0.1.running_mean"], after["features.0.1.running_mean"])
    learned = [key for key in before if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert learned and all(np.array_equal(before[key], after[key]) for key in learned), "learned weights unchanged"
    assert (tmp_path / "adapted" / MODEL_FILE).is_file()


def test_too_few_readable_images_fail_naming_the_count(mobilenet_bundle: Path, tmp_path: Path) -> None:
    files = plant_images(tmp_path / "plant", 1, seed=5, gain=1.0, offset=0)
    corrupt = tmp_path / "plant" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(TrainingError, match=r"1 readable of 2 local images; BatchNorm statistics need at least 2"):
        adapt_bundle(mobilenet_bundle, [*files, corrupt], tmp_path / "adapted")
    assert not (tmp_path / "adapted").exists()


def test_the_child_process_adapts_and_says_why_it_could_not(
    mobilenet_bundle: Path, classifier_bundle: Path, tmp_path: Path
) -> None:
    files = plant_images(tmp_path / "plant", 8, seed=6, gain=0.6, offset=10)
    manifest = adapt_in_child(mobilenet_bundle, files, tmp_path / "adapted")
    assert manifest.metrics[ADAPTED_IMAGES_METRIC] == 8 and (tmp_path / "adapted" / MODEL_FILE).is_file()
    # the tests' small CNN is a custom nn.Module: nothing to rebuild it from
    with pytest.raises(ExportError, match="cannot be rebuilt from weights"):
        adapt_in_child(classifier_bundle, files, tmp_path / "not-adapted")


def test_the_edge_serves_a_new_global_classifier_with_its_own_statistics(
    mobilenet_bundle: Path, tmp_path: Path
) -> None:
    from edge.adaptation import MIN_LOCAL_BATCHNORM_IMAGES
    from edge.inference.classifier import Classifier
    from edge.models import InstalledModel
    from edge.service import EdgeService
    from exporters.rebuild import rebuild_and_export
    from schemas.config import EdgeConfig, InferenceConfig

    published = read_model_manifest({MANIFEST_FILE: mobilenet_bundle / MANIFEST_FILE})
    version_1 = tmp_path / "edge" / "models" / published.name / "1"
    rebuild_and_export(
        published.model_copy(update={"version": 1, "parent": 0}),
        decisive_head_weights(mobilenet_bundle, tmp_path / "published.safetensors"),
        version_1,
    )
    installed = InstalledModel(read_model_manifest({MANIFEST_FILE: version_1 / MANIFEST_FILE}), version_1)

    def service(**models: object) -> EdgeService:
        config = EdgeConfig.model_validate(
            {
                "edge_id": "line-3",
                "data_dir": str(tmp_path / "edge"),
                "broker": {"host": "127.0.0.1", "port": 1},
                "models": {"classifier": str(mobilenet_bundle / MODEL_FILE), "regression_tolerance": 1.0, **models},
            }
        )
        return EdgeService(config)

    edge = service()
    edge._on_model_installed(installed)  # no local images yet: served as published
    assert edge.last_swap is not None and edge.last_swap.swapped and "BatchNorm" not in edge.last_swap.reason
    assert not (tmp_path / "edge" / "models-local").exists()

    for path in plant_images(tmp_path / "plant", 40, seed=7, gain=1.6, offset=50):
        # the split key fixes which images fall in the holdout, so every run adapts to the same images
        edge.buffer.samples.import_labeled(
            path.read_bytes(), width=64, height=64, verdict="good", boxes=[], author="qa", split_key=path.stem
        )
    local_images = len(edge.buffer.samples.recent_images(1000))
    assert MIN_LOCAL_BATCHNORM_IMAGES <= local_images < 40, "holdout images are not used"
    edge._on_model_installed(installed)
    adapted = tmp_path / "edge" / "models-local" / published.name / "1"
    assert edge.last_swap is not None and edge.last_swap.swapped
    assert edge.last_swap.reason.endswith(f"BatchNorm statistics of {local_images} local images")
    image = cv2.imread(str(tmp_path / "plant" / "000.png"), cv2.IMREAD_UNCHANGED)
    served = edge.pipeline.classifier.predict(image).probabilities
    expected = Classifier.load(adapted / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path).predict(image)
    plain = Classifier.load(version_1 / MODEL_FILE, InferenceConfig(), cache_dir=tmp_path).predict(image)
    np.testing.assert_allclose(served, expected.probabilities, atol=1e-6)
    assert abs(served[0] - plain.probabilities[0]) > 0.01, f"the statistics change what the model says: {served}"
    edge.engine.dispose()

    # after a restart the adapted copy is served again and reused, not computed again;
    # switched off, the published model is served
    again = service()
    assert again.pipeline.classifier.version == 1, "a restarted edge serves what it served before"
    np.testing.assert_allclose(again.pipeline.classifier.predict(image).probabilities, served, atol=1e-6)
    stamp = (adapted / MODEL_FILE).stat().st_mtime_ns
    again._on_model_installed(installed)
    assert again.last_swap is not None and f"of {local_images} local images" in again.last_swap.reason
    assert (adapted / MODEL_FILE).stat().st_mtime_ns == stamp
    again.engine.dispose()
    off = service(local_batchnorm=False)
    off._on_model_installed(installed)
    assert off.last_swap is not None and "BatchNorm" not in off.last_swap.reason
    np.testing.assert_allclose(off.pipeline.classifier.predict(image).probabilities, plain.probabilities, atol=1e-6)
    off.engine.dispose()
