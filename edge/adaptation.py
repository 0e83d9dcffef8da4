"""Which copy of a new global classifier an edge considers serving: the published one, or one with BatchNorm
statistics of this plant's own recent images (``edge.training.batchnorm`` computes them in a child process).

The policy: adapt when ``models.local_batchnorm`` is on, the model is a classifier with weights, it reads images
alone (a template comparison's statistics are not the images'), and at least ``MIN_LOCAL_BATCHNORM_IMAGES`` recent
images outside the holdout exist. An adapted copy lives in ``models-local/{name}/{version}`` (renamed into place
whole) and is reused after a restart. Any failure keeps the published model, logged.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edge.buffer.samples import SampleStore
from edge.models import InstalledModel
from edge.training.batchnorm import ADAPTED_IMAGES_METRIC, adapt_in_child
from schemas.bundle import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, read_model_manifest
from schemas.config import EdgeModelsConfig
from schemas.errors import FedinspectError
from schemas.manifests import Task, TemplateInput

log = logging.getLogger(__name__)

MIN_LOCAL_BATCHNORM_IMAGES = 16
"""Fewer local images than this give BatchNorm statistics noisier than the published average."""


def model_to_consider(
    installed: InstalledModel,
    settings: EdgeModelsConfig,
    samples: SampleStore,
    *,
    adapted_dir: Path,
    threads: int,
) -> tuple[Path, int]:
    """The new classifier with BatchNorm statistics of this plant's recent images (``edge.training.batchnorm``),
    and how many images they come from; the bundle's own model file and 0 where that is off or not possible."""
    manifest = installed.manifest
    published = installed.directory / MODEL_FILE
    if not settings.local_batchnorm or manifest.task != Task.CLASSIFY or WEIGHTS_FILE not in manifest.files:
        return published, 0
    target = adapted_dir / manifest.name / str(manifest.version)
    context = {"model": manifest.name, "version": manifest.version}
    if manifest.input.template == TemplateInput.COMPOSITE:
        log.info(
            "new model keeps its published BatchNorm statistics",
            extra=context | {"reason": "local statistics are computed on images alone, not template comparisons"},
        )
        return published, 0
    if (target / MANIFEST_FILE).is_file():  # adapted before a restart; the folder appears complete or not at all
        metrics = read_model_manifest({MANIFEST_FILE: target / MANIFEST_FILE}).metrics
        return target / MODEL_FILE, int(metrics.get(ADAPTED_IMAGES_METRIC, 0))
    images = samples.recent_images(settings.local_batchnorm_images)
    if len(images) < MIN_LOCAL_BATCHNORM_IMAGES:
        log.info(
            "new model keeps its published BatchNorm statistics",
            extra=context | {"reason": f"{len(images)} local images, {MIN_LOCAL_BATCHNORM_IMAGES} needed"},
        )
        return published, 0
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        adapted = adapt_in_child(installed.directory, images, staging, threads=threads)
    except FedinspectError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        log.warning(
            "local BatchNorm statistics not computed; using the model as published",
            extra=context | {"error": str(exc)},
        )
        return published, 0
    staging.rename(target)
    count = int(adapted.metrics.get(ADAPTED_IMAGES_METRIC, 0))
    log.info("local BatchNorm statistics computed", extra=context | {"images": count})
    return target / MODEL_FILE, count
