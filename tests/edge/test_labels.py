"""Label file formats: YOLO and DeepPCB parsing with errors naming the file and line."""

from __future__ import annotations

import pytest

from edge.labels import (
    DEEPPCB_TYPES,
    LabelFileError,
    LabelFormat,
    is_deeppcb_template,
    label_stem,
    pair_stem,
    parse_deeppcb,
    parse_yolo,
)


def test_yolo_boxes_become_pixels() -> None:
    label = parse_yolo(
        "1 0.5 0.5 0.25 0.5\n\n0 0.1 0.1 0.2 0.2\n", name="a.txt", width=200, height=100, classes=["open", "short"]
    )
    assert label.verdict == "defective"
    assert label.boxes[0] == {"x1": 75.0, "y1": 25.0, "x2": 125.0, "y2": 75.0, "class_name": "short"}
    assert label.boxes[1]["x1"] == 0.0 and label.boxes[1]["class_name"] == "open"
    assert parse_yolo("", name="b.txt", width=10, height=10, classes=["x"]).verdict == "good"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.1", "a.txt line 1: expected 'class cx cy w h'"),
        ("2 0.5 0.5 0.1 0.1", "class 2 is not one of 0..1"),
        ("0 1.5 0.5 0.1 0.1", "normalized"),
        ("\nx 0.5 0.5 0.1 0.1", "a.txt line 2: expected numbers"),
    ],
)
def test_bad_yolo_lines_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(LabelFileError, match=message):
        parse_yolo(text, name="a.txt", width=10, height=10, classes=["a", "b"])


def test_deeppcb_lines_and_pairs() -> None:
    label = parse_deeppcb(
        "10 20 30 40 1\n50,60,70,80,6\n", name="00041000.txt", width=640, height=640, classes=list(DEEPPCB_TYPES)
    )
    assert [b["class_name"] for b in label.boxes] == ["open", "pin-hole"] and label.verdict == "defective"
    assert label_stem("00041000_test.jpg", LabelFormat.DEEPPCB) == "00041000"
    assert label_stem("00041000_temp.jpg", LabelFormat.DEEPPCB) == "00041000"
    assert pair_stem("group1/00041000_temp.jpg") == pair_stem("00041000_test.png") == "00041000"
    assert pair_stem("line-3/board-17.png") == "board-17"
    assert label_stem("board_test.png", LabelFormat.YOLO) == "board_test"
    assert is_deeppcb_template("00041000_temp.jpg") and not is_deeppcb_template("00041000_test.jpg")
    with pytest.raises(LabelFileError, match=r"line 1: type 7 is not one of 1\.\.6"):
        parse_deeppcb("1 1 5 5 7", name="x.txt", width=10, height=10, classes=list(DEEPPCB_TYPES))
    with pytest.raises(LabelFileError, match="not inside the 10x10 image"):
        parse_deeppcb("1 1 50 5 1", name="x.txt", width=10, height=10, classes=list(DEEPPCB_TYPES))
    with pytest.raises(LabelFileError, match="'short' is not a detector class"):
        parse_deeppcb("1 1 5 5 2", name="x.txt", width=10, height=10, classes=["open"])
