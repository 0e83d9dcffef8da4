"""Synthetic PCB inspection images: procedural boards and the six DeepPCB defect classes, deterministic by seed.

Boards look like DeepPCB's binarized scans: bright copper (traces, pads, holes) on a dark substrate, one channel.
Each board has a defect-free template (a "good" image) and a defective copy with boxed defects. A ``PlantStyle``
varies trace widths, pad sizes, defect mix, brightness and noise so plants differ (non-IID splits).

Gives the demo and the benchmarks their boards (``make_board``) and good / defective classification samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.labels import DEEPPCB_TYPES

DEFECT_CLASSES = DEEPPCB_TYPES
"""DeepPCB's defect types 1-6, in order (YOLO class index = DeepPCB type - 1)."""

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class PlantStyle:
    """How one plant's boards and defects look."""

    trace_width: tuple[int, int] = (4, 9)
    pad_radius: tuple[int, int] = (6, 12)
    traces: tuple[int, int] = (6, 12)
    copper: int = 235
    substrate: int = 20
    noise: float = 6.0
    defect_weights: tuple[float, ...] = field(default=(1.0,) * len(DEFECT_CLASSES))


@dataclass(frozen=True)
class Board:
    """A template (defect-free) image, its defective copy and the defects' boxes (x1, y1, x2, y2, class)."""

    template: np.ndarray
    defective: np.ndarray
    defects: list[tuple[int, int, int, int, int]]


def _draw_layout(rng: np.random.Generator, size: int, style: PlantStyle) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    import cv2

    image = np.full((size, size), style.substrate, np.uint8)
    segments: list[tuple[int, ...]] = []
    for _ in range(int(rng.integers(*style.traces, endpoint=True))):
        width = int(rng.integers(*style.trace_width, endpoint=True))
        x0, y0 = (int(v) for v in rng.integers(size // 10, size - size // 10, 2))
        horizontal = bool(rng.integers(0, 2))
        length = int(rng.integers(size // 4, size // 2)) * (1 if rng.integers(0, 2) else -1)
        x1, y1 = (
            (int(np.clip(x0 + length, 8, size - 8)), y0) if horizontal else (x0, int(np.clip(y0 + length, 8, size - 8)))
        )
        # Manhattan routing with one 45-degree-free bend, like real boards.
        bend = int(rng.integers(-size // 6, size // 6))
        x2, y2 = (
            (x1, int(np.clip(y1 + bend, 8, size - 8))) if horizontal else (int(np.clip(x1 + bend, 8, size - 8)), y1)
        )
        for a, b in (((x0, y0), (x1, y1)), ((x1, y1), (x2, y2))):
            cv2.line(image, a, b, style.copper, width)
            segments.append((a[0], a[1], b[0], b[1], width))
        radius = int(rng.integers(*style.pad_radius, endpoint=True))
        for cx, cy in ((x0, y0), (x2, y2)):
            cv2.circle(image, (cx, cy), radius, style.copper, -1)
            cv2.circle(image, (cx, cy), max(2, radius // 3), style.substrate, -1)
    return image, segments


def _point_on(rng: np.random.Generator, segment: tuple[int, ...]) -> tuple[int, int, int, bool]:
    x0, y0, x1, y1, width = segment
    t = float(rng.uniform(0.2, 0.8))
    return int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0)), width, y0 == y1


THIN_FEATURE_PX = 4
"""Spurs and shorts are this thick at least: a 3 px line comes out of a re-acquisition's blur and re-binarization
(``demo_data.reacquire``) 1-3 px thick, no thicker than the edges a 1-2 px misregistration leaves, which a 3 px
opening of the template difference (``ProposalSpec.open_px``) drops."""


def _add_defect(
    image: np.ndarray, rng: np.random.Generator, kind: int, segments: list[tuple[int, ...]], style: PlantStyle
) -> None:
    """Draw one defect of ``kind`` onto ``image`` (its box is what it changed, ``_changed_box``)."""
    import cv2

    size = image.shape[0]
    segment = segments[int(rng.integers(0, len(segments)))]
    x, y, width, horizontal = _point_on(rng, segment)
    copper, substrate = style.copper, style.substrate
    name = DEFECT_CLASSES[kind]
    if name == "open":  # a gap across the trace
        gap = int(rng.integers(3, 7))
        box = (x - gap, y - width, x + gap, y + width) if horizontal else (x - width, y - gap, x + width, y + gap)
        cv2.rectangle(image, box[:2], box[2:], substrate, -1)
    elif name == "short":  # a copper bridge sticking out sideways
        reach = int(rng.integers(12, 26))
        end = (x, min(size - 2, y + reach)) if horizontal else (min(size - 2, x + reach), y)
        cv2.line(image, (x, y), end, copper, max(THIN_FEATURE_PX, width // 2))
    elif name == "mousebite":  # bites out of a trace edge
        radius = max(3, width // 2 + 1)
        cx, cy = (x, y - width // 2) if horizontal else (x - width // 2, y)
        cv2.circle(image, (cx, cy), radius, substrate, -1)
    elif name == "spur":  # a thin spike from the edge
        length = int(rng.integers(6, 12))
        end = (x + 3, y + width // 2 + length) if horizontal else (x + width // 2 + length, y + 3)
        cv2.line(image, (x, y), end, copper, THIN_FEATURE_PX)
    elif name == "copper":  # a stray blob away from traces
        cx, cy = (int(v) for v in rng.integers(16, size - 16, 2))
        axes = (int(rng.integers(3, 8)), int(rng.integers(3, 8)))
        cv2.ellipse(image, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, copper, -1)
    else:  # pin-hole: a small hole in copper
        cv2.circle(image, (x, y), max(2, width // 3), substrate, -1)


LABEL_MARGIN_PX = 2
"""A defect's box is its changed pixels and this margin on every side, as a person boxes a defect tightly."""


MIN_DEFECT_PIXELS = 9
"""A drawn defect must change at least this many pixels (a 3 x 3 square) that are ``VISIBLE_CORE_PX`` thick."""
VISIBLE_CORE_PX = 3
"""A change thinner than this is indistinguishable from the board being scanned 1-2 px off its template (what
every re-acquired board is, ``demo_data.reacquire``): stray copper drawn mostly onto copper leaves such slivers."""
DEFECT_ATTEMPTS = 6
"""Places tried for each drawn defect before the board goes without it."""


def _changed_box(before: np.ndarray, after: np.ndarray) -> Box | None:
    """The box around the pixels a defect changed (``LABEL_MARGIN_PX`` beyond them), None if fewer than
    ``MIN_DEFECT_PIXELS`` of them lie in a part of the change at least ``VISIBLE_CORE_PX`` thick (stray copper
    drawn onto copper, a spur along its own trace, a short whose bridge lies mostly on copper)."""
    import cv2

    changed = (before != after).astype(np.uint8)
    core = cv2.morphologyEx(changed, cv2.MORPH_OPEN, np.ones((VISIBLE_CORE_PX, VISIBLE_CORE_PX), np.uint8))
    if int(core.sum()) < MIN_DEFECT_PIXELS:
        return None
    rows, cols = np.nonzero(changed)
    size = after.shape[0]
    return (
        max(0, int(cols.min()) - LABEL_MARGIN_PX),
        max(0, int(rows.min()) - LABEL_MARGIN_PX),
        min(size, int(cols.max()) + 1 + LABEL_MARGIN_PX),
        min(size, int(rows.max()) + 1 + LABEL_MARGIN_PX),
    )


def _finish(image: np.ndarray, rng: np.random.Generator, style: PlantStyle) -> np.ndarray:
    noisy = image.astype(np.float32) + rng.normal(0.0, style.noise, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_board(
    rng: np.random.Generator, size: int, style: PlantStyle, defects: int, classes: Sequence[int] | None = None
) -> Board:
    """One board: template, defective copy and its defects (class indices drawn from ``classes``)."""
    layout, segments = _draw_layout(rng, size, style)
    defective = layout.copy()
    allowed = list(classes) if classes is not None else list(range(len(DEFECT_CLASSES)))
    weights = np.asarray([style.defect_weights[c] for c in allowed], dtype=np.float64)
    boxes = []
    for _ in range(defects):
        kind = int(allowed[int(rng.choice(len(allowed), p=weights / weights.sum()))])
        for _attempt in range(DEFECT_ATTEMPTS):  # an invisible defect would be an unlabeled change: try elsewhere
            before = defective.copy()
            _add_defect(defective, rng, kind, segments, style)
            box = _changed_box(before, defective)
            if box is not None:
                boxes.append((*box, kind))
                break
            defective = before
    return Board(template=_finish(layout, rng, style), defective=_finish(defective, rng, style), defects=boxes)


def classification_samples(
    count: int, *, size: int = 128, seed: int = 0, style: PlantStyle | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` grayscale images (N, size, size) and labels (0 good, 1 defective), balanced and shuffled."""
    style = style or PlantStyle()
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size), np.uint8)
    labels = np.arange(count) % 2
    rng.shuffle(labels)
    for index, label in enumerate(labels):
        board = make_board(rng, size, style, int(rng.integers(2, 5)))
        images[index] = board.defective if label else board.template
    return images, labels.astype(np.int64)
