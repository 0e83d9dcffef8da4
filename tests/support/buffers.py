"""Labeled samples in a real edge buffer: generated blob images, imported with fixed split keys."""

from __future__ import annotations

from edge.buffer import EdgeBuffer
from edge.inference.templates import Template
from tests.support.models import CLASSIFIER_SIZE, blob_samples
from tests.support.processes import png


def blob_split_key(seed: int, index: int) -> str:
    """The split key of image ``index`` of ``import_labeled_blobs(..., seed=seed)``."""
    return f"blob-{seed}-{index}"


def import_labeled_blobs(buffer: EdgeBuffer, count: int, *, seed: int, template: Template | None = None) -> list[str]:
    """Import ``blob_samples(count, seed)`` with their labels; with ``template``, every second one is stored with it.

    Each image gets a fixed split key (``blob_split_key``): with the random sample ids alone, which images (and how
    many) fall in the holdout would change from run to run, and so would the scores tests compare on it.
    """
    images, labels = blob_samples(count, seed=seed)
    return [
        buffer.samples.import_labeled(
            png(image),
            width=CLASSIFIER_SIZE,
            height=CLASSIFIER_SIZE,
            verdict="defective" if label else "good",
            boxes=[],
            author="qa",
            split_key=blob_split_key(seed, index),
            template=template if index % 2 else None,
        )
        for index, (image, label) in enumerate(zip(images, labels, strict=True))
    ]
