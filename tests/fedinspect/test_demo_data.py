"""Plants for the demo and the FL benchmark: generated boards, and DeepPCB's layout read and split by group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedinspect.cli import cli
from fedinspect.demo_data import (
    LabeledImage,
    _moved,
    deeppcb_plants,
    plant_kinds,
    reacquire,
    read_deeppcb,
    synthetic_plants,
    without_kinds,
    write_plant_data,
)

cv2 = pytest.importorskip("cv2")


def test_generated_plants_are_deterministic_paired_and_differ() -> None:
    first, again = (
        synthetic_plants(3, train_boards=4, test_boards=2, size=128, seed=5),
        synthetic_plants(3, train_boards=4, test_boards=2, size=128, seed=5),
    )
    for a, b in zip(first.plants, again.plants, strict=True):
        assert all(np.array_equal(x.image, y.image) for x, y in zip(a.train, b.train, strict=True))
    plant = first.plants[0]
    assert [i.defective for i in plant.train] == [False, True] * 4  # each board: template, then defective copy
    assert all(i.boxes == [] for i in plant.train if not i.defective)
    assert all(3 <= len(i.boxes) <= 12 for i in plant.train if i.defective)
    brightness = [float(np.mean([i.image.mean() for i in p.train])) for p in first.plants]
    assert len({round(b) for b in brightness}) == 3, "plants differ in lighting"
    assert len(first.unseen) == 4


def fake_deeppcb(root: Path, groups: list[str], pairs: int) -> Path:
    """DeepPCB's layout: groupG/G/NNN_temp.jpg + _test.jpg, groupG/G_not/NNN.txt, trainval.txt."""
    lines = []
    for group in groups:
        code = group.removeprefix("group")
        for index in range(pairs):
            stem = f"{code}{index:03d}"
            images = root / group / code
            images.mkdir(parents=True, exist_ok=True)
            for suffix in ("_temp", "_test"):
                cv2.imwrite(str(images / f"{stem}{suffix}.jpg"), np.full((640, 640), 40, np.uint8))
            labels = root / group / f"{code}_not"
            labels.mkdir(parents=True, exist_ok=True)
            (labels / f"{stem}.txt").write_text("100 200 140 260 2\n320 320 352 336 6\n")
            lines.append(f"{group}/{code}/{stem}.jpg {group}/{code}_not/{stem}.txt")
    (root / "trainval.txt").write_text("\n".join(lines) + "\n")
    return root


def test_deeppcb_pairs_are_read_by_group_with_boxes_scaled(tmp_path: Path) -> None:
    root = fake_deeppcb(tmp_path / "deeppcb", ["group00041", "group13000"], pairs=2)
    groups = read_deeppcb(root, size=320)
    assert sorted(groups) == ["group00041", "group13000"]
    template, test = groups["group00041"][:2]
    assert (template.name, template.defective, template.boxes) == ("00041000_temp", False, [])
    assert test.defective and test.image.shape == (320, 320)
    assert test.boxes == [(1, 50.0, 100.0, 70.0, 130.0), (5, 160.0, 160.0, 176.0, 168.0)]  # type 2 short, 6 pin-hole


def test_deeppcb_plants_are_board_groups_with_unseen_groups_held_out(tmp_path: Path) -> None:
    root = fake_deeppcb(tmp_path / "deeppcb", ["group1", "group2", "group3", "group4"], pairs=5)
    data = deeppcb_plants(root, plants=3, held_out_groups=1, size=64)
    assert [p.name for p in data.plants] == ["plant-a", "plant-b", "plant-c"]
    assert {i.name[:1] for i in data.unseen} == {"4"}, "the last group is boards no plant trains on"
    for plant in data.plants:
        assert len(plant.train) + len(plant.test) == 10 and len(plant.test) == 2  # one of five pairs is test
        assert {i.name.rsplit("_", 1)[0] for i in plant.test}.isdisjoint(
            {i.name.rsplit("_", 1)[0] for i in plant.train}
        )
    with pytest.raises(ValueError, match="4 board groups, need 4 plants \\+ 1 held out"):
        deeppcb_plants(root, plants=4)


def test_plant_kinds_overlap_cover_every_kind_and_no_plant_has_all() -> None:
    kinds = [plant_kinds(index, 3, 4) for index in range(3)]
    assert kinds == [(0, 1, 2, 3), (2, 3, 4, 5), (0, 1, 4, 5)]
    assert all(sum(kind in k for k in kinds) == 2 for kind in range(6)), "every kind is known to two plants"
    assert plant_kinds(1, 3, 6) == (0, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"kinds per plant must be 1\.\.6, got 7"):
        plant_kinds(0, 3, 7)


def test_a_removed_kind_is_painted_over_with_the_aligned_template_and_kept_defects_stay() -> None:
    template = np.full((64, 64), 20, np.uint8)
    template[30:34, :] = 230  # a trace
    scan = np.roll(template, 1, axis=1).copy()  # the scan sits 1 px right of its template (no trace moves: horizontal)
    scan = np.roll(scan, 2, axis=0).copy()  # and 2 px down
    scan[28:32, 5:9] = 230  # kind 4 (copper) touching the trace, to remove
    scan[40:44, 40:44] = 230  # kind 0 (open), to keep
    boxes = [(4, 5.0, 28.0, 8.0, 31.0), (0, 40.0, 40.0, 43.0, 43.0)]
    image = LabeledImage("b_test", scan, True, boxes, template)
    kept = without_kinds(image, template, (0, 1))
    assert kept.boxes == [boxes[1]] and kept.defective
    assert (kept.image[26:32, 3:11] == 20).all(), "the removed defect is gone, painted with the aligned template"
    assert (kept.image[32:34, 3:11] == 230).all(), "the trace under the paint sits where the scan has it"
    assert (kept.image[40:44, 40:44] == 230).all(), "the kept defect is untouched"
    assert (kept.image[32:36, :] == 230).all() and (kept.image[30:32, 12:] == 20).all()
    assert (image.image[28:32, 5:9] == 230).all(), "the input is not changed"
    only_removed = without_kinds(LabeledImage("c_test", scan, True, boxes[:1], template), template, (0,))
    assert only_removed.boxes == [] and not only_removed.defective, "a board left with no defect is a good board"
    assert without_kinds(image, template, (0, 4)) is image


def test_plants_with_some_kinds_train_on_those_and_are_tested_on_all(tmp_path: Path) -> None:
    root = fake_deeppcb(tmp_path / "deeppcb", ["group1", "group2", "group3", "group4"], pairs=5)
    for board in sorted(root.glob("group*/*/*_test.jpg")):  # a short and a pin-hole drawn on each test image
        pixels = np.full((640, 640), 40, np.uint8)
        pixels[200:260, 100:140] = pixels[320:336, 320:352] = 250
        cv2.imwrite(str(board), pixels)
    data = deeppcb_plants(root, plants=3, size=640, kinds_per_plant=4)
    plant_a = data.plants[0]  # open, short, mousebite, spur: the pin-hole (5) is painted over
    assert {box[0] for image in plant_a.train for box in image.boxes} == {1}
    assert all(image.template is None for image in plant_a.train), "templates only with reference"
    trained = next(image for image in plant_a.train if image.defective)
    assert trained.image[320:336, 320:352].max() < 100 and trained.image[200:260, 100:140].min() > 200
    assert {box[0] for image in plant_a.test for box in image.boxes} == {1, 5}, "test boards keep every kind"
    assert {box[0] for image in data.unseen for box in image.boxes} == {1, 5}
    generated = synthetic_plants(3, train_boards=6, test_boards=4, size=128, seed=1, kinds_per_plant=2)
    for index, plant in enumerate(generated.plants):
        assert {box[0] for image in plant.train for box in image.boxes} <= set(plant_kinds(index, 3, 2))
    assert len({box[0] for plant in generated.plants for image in plant.test for box in image.boxes}) > 2


def test_deeppcb_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no trainval\.txt"):
        read_deeppcb(tmp_path)
    root = fake_deeppcb(tmp_path / "deeppcb", ["group1"], pairs=1)
    (root / "trainval.txt").write_text("only-one-field\n")
    with pytest.raises(ValueError, match=r"trainval\.txt line 1: expected 'image_path annotation_path'"):
        read_deeppcb(root)


def _label_rows(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()]


def test_deeppcb_import_writes_yolo_and_classifier_data_per_plant(tmp_path: Path) -> None:
    root = fake_deeppcb(tmp_path / "deeppcb", ["group1", "group2", "group3", "group4"], pairs=5)
    out = tmp_path / "plants"
    result = CliRunner().invoke(cli, ["data", "deeppcb", str(root), str(out), "--plants", "3", "--size", "320"])
    assert result.exit_code == 0, result.output
    assert "plant-a: train 4 good + 4 defective (8 boxes), val 1 good + 1 defective (2 boxes)" in result.output
    detect = out / "plant-a" / "detect"
    assert sorted(p.name for p in (detect / "images" / "train").iterdir())[:2] == ["1000_temp.png", "1000_test.png"]
    # DeepPCB's "100 200 140 260 2" on 640 px -> class 1 (short), centre (120, 230) / 640, size 40 x 60 / 640
    assert _label_rows(detect / "labels" / "train" / "1000_test.txt")[0] == pytest.approx(
        [1, 0.1875, 0.359375, 0.0625, 0.09375]
    )
    assert (detect / "labels" / "train" / "1000_temp.txt").read_text() == "", "templates are background images"
    data_yaml = (detect / "data.yaml").read_text()
    assert f"path: {detect.resolve()}\n" in data_yaml and "  5: pin-hole" in data_yaml
    assert cv2.imread(str(detect / "images" / "train" / "1000_test.png"), cv2.IMREAD_UNCHANGED).shape == (320, 320)
    classify = out / "plant-a" / "classify"
    assert {p.name for p in (classify / "train" / "good").iterdir()} == {
        p.name for p in (detect / "images" / "train").iterdir() if p.name.endswith("_temp.png")
    }
    assert len(list((classify / "val" / "defective").iterdir())) == 1
    assert sorted(p.name for p in (out / "unseen" / "classify" / "val" / "good").iterdir())[0] == "4000_temp.png"
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["source"]["kind"] == "deeppcb" and summary["plants"]["unseen"]["val"]["defective"] == 5
    assert not list(tmp_path.glob(".*partial")), "the staging folder is renamed into place"


def test_data_writer_refuses_a_used_folder_and_leaves_it_intact(tmp_path: Path) -> None:
    out = tmp_path / "plants"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    result = CliRunner().invoke(cli, ["data", "generate", str(out), "--boards", "1", "--test-boards", "1"])
    assert result.exit_code == 2
    assert f"{out}: exists and is not an empty folder" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "earlier work"
    bad = fake_deeppcb(tmp_path / "deeppcb", ["group1"], pairs=1)
    (bad / "group1" / "1" / "1000_test.jpg").write_bytes(b"not a jpeg")
    result = CliRunner().invoke(cli, ["data", "deeppcb", str(bad), str(tmp_path / "new"), "--plants", "1"])
    assert result.exit_code == 2 and "1000_test.jpg: missing or not an image" in result.output
    assert not (tmp_path / "new").exists()


def test_generated_data_on_disk_matches_the_plants_in_memory(tmp_path: Path) -> None:
    data = synthetic_plants(2, train_boards=2, test_boards=1, size=96, seed=4)
    summary = write_plant_data(data, tmp_path / "out", source={"kind": "synthetic"})
    assert summary["plants"] == {
        "plant-a": {
            "train": {"good": 2, "defective": 2, "boxes": sum(len(i.boxes) for i in data.plants[0].train)},
            "val": {"good": 1, "defective": 1, "boxes": sum(len(i.boxes) for i in data.plants[0].test)},
        },
        "plant-b": {
            "train": {"good": 2, "defective": 2, "boxes": sum(len(i.boxes) for i in data.plants[1].train)},
            "val": {"good": 1, "defective": 1, "boxes": sum(len(i.boxes) for i in data.plants[1].test)},
        },
        "unseen": {"val": {"good": 1, "defective": 1, "boxes": sum(len(i.boxes) for i in data.unseen)}},
    }
    item = data.plants[1].train[1]
    written = cv2.imread(str(tmp_path / "out" / "plant-b" / "classify" / "train" / "defective" / f"{item.name}.png"), 0)
    assert np.array_equal(written, item.image), "PNG keeps the generated pixels exactly"
    rows = _label_rows(tmp_path / "out" / "plant-b" / "detect" / "labels" / "train" / f"{item.name}.txt")
    assert [int(r[0]) for r in rows] == [kind for kind, *_ in item.boxes]


def test_deeppcb_with_reference_compares_each_image_with_its_template(tmp_path: Path) -> None:
    root = fake_deeppcb(tmp_path / "deeppcb", ["group00041"], pairs=1)
    test_file = root / "group00041" / "00041" / "00041000_test.jpg"
    template_file = root / "group00041" / "00041" / "00041000_temp.jpg"
    layout = np.full((640, 640), 40, np.uint8)
    layout[:, 400:440] = 240  # a trace
    cv2.imwrite(str(template_file), layout)
    board = layout.copy()
    board[200:260, 100:140] = 240  # a short: copper where the template has none
    cv2.imwrite(str(test_file), board)
    good, test = read_deeppcb(root, size=320, reference=True)["group00041"]
    assert test.image.shape == (320, 320) and test.template is not None and good.template is not None
    expected_template = cv2.resize(
        cv2.imread(str(template_file), cv2.IMREAD_GRAYSCALE), (320, 320), interpolation=cv2.INTER_AREA
    )
    np.testing.assert_array_equal(test.template, expected_template)
    np.testing.assert_array_equal(good.template, expected_template)
    seen, seen_good = test.model_input(), good.model_input()
    assert seen.shape == seen_good.shape == (320, 320, 3)
    # the good sample is the template seen again: its difference shows only the trace's shifted edges and specks
    assert (seen_good[:, :, 2] != 128).any() and (np.abs(seen_good[:, :, 2].astype(int) - 128) > 50).mean() < 0.03
    assert seen[115, 60, 2] > 200 and seen[10, 10, 2] == 128, "the short reads bright in the difference"
    np.testing.assert_array_equal(seen[:, :, 1], expected_template)
    assert read_deeppcb(root, size=320)["group00041"][1].model_input().shape == (320, 320), "no reference: alone"
    cv2.imwrite(str(test_file), np.full((600, 640), 40, np.uint8))
    for size in (None, 320):  # refused also where both would be resized to the same size
        with pytest.raises(ValueError, match=r"00041000_test.jpg 640x600 and its template 640x640 differ"):
            read_deeppcb(root, size=size, reference=True)


def test_generated_plants_with_reference_carry_their_templates() -> None:
    data = synthetic_plants(1, train_boards=2, test_boards=1, size=64, seed=1, reference=True)
    good, defective = data.plants[0].train[:2]
    assert defective.template is not None and good.template is not None
    np.testing.assert_array_equal(defective.template, good.template)
    assert (good.image != good.template).any(), "a good sample is never its own template"
    seen = defective.model_input()
    assert seen.shape == (64, 64, 3)
    np.testing.assert_array_equal(seen[:, :, 0], defective.image)
    np.testing.assert_array_equal(seen[:, :, 1], good.template)
    assert (seen[:, :, 2] != 128).any(), "the defects show in the difference"
    plain = synthetic_plants(1, train_boards=2, test_boards=1, size=64, seed=1).plants[0].train[0]
    assert plain.template is None and plain.image.shape == (64, 64)


def test_a_reacquired_board_is_shifted_rebinarized_and_specked_and_its_boxes_follow() -> None:
    board = np.full((100, 100), 20, np.uint8)
    board[40:60, 30:70] = 230  # a pad
    image, dx, dy = reacquire(board, np.random.default_rng(3))
    assert 1 <= abs(dx) <= 2 and 1 <= abs(dy) <= 2
    assert set(np.unique(image)) <= {20, 230}, "re-binarized to the board's own two levels"
    moved = np.roll(np.roll(board, dy, axis=0), dx, axis=1)
    differing = int((image != moved).sum())
    assert 0 < differing <= 12 * 9, "only the specks (at most 12 of 3x3 px) differ from the shifted board"
    again, *_ = reacquire(board, np.random.default_rng(3))
    np.testing.assert_array_equal(image, again)
    noisy, *_ = reacquire(board, np.random.default_rng(3), noise=6.0)
    assert len(np.unique(noisy)) > 2
    # boxes move with the board, clamped to the image
    assert _moved([(0, 10.0, 10.0, 20.0, 20.0), (3, 0.0, 60.0, 5.0, 63.0)], 2, -1, 64) == [
        (0, 12.0, 9.0, 22.0, 19.0),
        (3, 2.0, 59.0, 7.0, 62.0),
    ]
    assert _moved([(1, 60.0, 0.0, 63.0, 4.0)], 2, -2, 64) == [(1, 62.0, 0, 63, 2.0)]
