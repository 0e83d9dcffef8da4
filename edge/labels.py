"""Label file formats the edge imports: Ultralytics YOLO txt and DeepPCB txt.

- YOLO: one box a line, ``class cx cy w h`` normalized to 0-1 by the image size; an empty file means a good image.
- DeepPCB: one box a line, ``x1 y1 x2 y2 type`` in pixels, type 1-6 (open, short, mousebite, spur, spurious copper,
  pin-hole); a template image (``*_temp.*``) is a good image without a label file.
Each error names the file and the line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

DEEPPCB_TYPES = ("open", "short", "mousebite", "spur", "copper", "pin-hole")


class LabelFormat(StrEnum):
    YOLO = "yolo"
    DEEPPCB = "deeppcb"


class LabelFileError(ValueError):
    """A label file line cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class ParsedLabel:
    verdict: str
    boxes: list[dict[str, object]]


def _numbers(parts: list[str], where: str) -> list[float]:
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise LabelFileError(f"{where}: expected numbers, got {' '.join(parts)!r}") from None


def parse_yolo(text: str, *, name: str, width: int, height: int, classes: Sequence[str]) -> ParsedLabel:
    boxes: list[dict[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{name} line {number}"
        if len(parts) != 5:
            raise LabelFileError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
        values = _numbers(parts, where)
        class_id = int(values[0])
        if values[0] != class_id or not 0 <= class_id < len(classes):
            raise LabelFileError(f"{where}: class {parts[0]} is not one of 0..{len(classes) - 1}")
        cx, cy, w, h = values[1:]
        if not all(0 <= v <= 1 for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise LabelFileError(f"{where}: coordinates must be normalized to 0-1 with w, h > 0")
        boxes.append(
            {
                "x1": max(0.0, (cx - w / 2) * width),
                "y1": max(0.0, (cy - h / 2) * height),
                "x2": min(float(width), (cx + w / 2) * width),
                "y2": min(float(height), (cy + h / 2) * height),
                "class_name": classes[class_id],
            }
        )
    return ParsedLabel("defective" if boxes else "good", boxes)


def parse_deeppcb(text: str, *, name: str, width: int, height: int, classes: Sequence[str]) -> ParsedLabel:
    boxes: list[dict[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        where = f"{name} line {number}"
        if len(parts) != 5:
            raise LabelFileError(f"{where}: expected 'x1 y1 x2 y2 type', got {line.strip()!r}")
        x1, y1, x2, y2, kind = _numbers(parts, where)
        if kind != int(kind) or not 1 <= int(kind) <= len(DEEPPCB_TYPES):
            raise LabelFileError(f"{where}: type {parts[4]} is not one of 1..{len(DEEPPCB_TYPES)}")
        class_name = DEEPPCB_TYPES[int(kind) - 1]
        if class_name not in classes:
            raise LabelFileError(f"{where}: DeepPCB type {class_name!r} is not a detector class ({', '.join(classes)})")
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise LabelFileError(f"{where}: box ({x1}, {y1}, {x2}, {y2}) is not inside the {width}x{height} image")
        boxes.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class_name": class_name})
    return ParsedLabel("defective" if boxes else "good", boxes)


LabelParser = Callable[..., ParsedLabel]
"""``(text, *, name, width, height, classes) -> ParsedLabel``."""


def label_parser(fmt: LabelFormat) -> LabelParser:
    """The parser of label files in ``fmt``."""
    return parse_yolo if fmt == LabelFormat.YOLO else parse_deeppcb


def label_stem(image_name: str, fmt: LabelFormat) -> str:
    """The label file stem that belongs to an image file name (DeepPCB: 00041000_test.jpg -> 00041000)."""
    stem = image_name.rsplit(".", 1)[0]
    if fmt == LabelFormat.DEEPPCB:
        for suffix in ("_test", "_temp"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
    return stem


def pair_stem(image_name: str) -> str:
    """The board an image shows, by DeepPCB's naming: 00041000_test.jpg and 00041000_temp.jpg -> 00041000.

    Imported images of one board share their holdout side (``edge.buffer.labels.is_holdout``); other names stand alone.
    """
    return label_stem(Path(image_name).name, LabelFormat.DEEPPCB)


def is_deeppcb_template(image_name: str) -> bool:
    return image_name.rsplit(".", 1)[0].endswith("_temp")


def label_problems(
    verdict: str, boxes: Sequence[Mapping[str, Any]], *, width: int, height: int, classes: Sequence[str] | None
) -> list[str]:
    """What is wrong with a person's label of a ``width`` x ``height`` image (empty: nothing): a good verdict with
    boxes, corners out of order or outside the image, a class the detector does not know (``classes``; None when
    no detector is loaded)."""
    problems = []
    if verdict == "good" and boxes:
        problems.append("a good sample cannot have defect boxes")
    for index, box in enumerate(boxes):
        if box["x2"] <= box["x1"] or box["y2"] <= box["y1"]:
            problems.append(f"box {index}: corners out of order")
        if box["x2"] > width or box["y2"] > height:
            problems.append(f"box {index}: outside the {width}x{height} image")
        if classes is not None and box["class_name"] not in classes:
            problems.append(f"box {index}: unknown class {box['class_name']!r} (known: {', '.join(classes)})")
    return problems
