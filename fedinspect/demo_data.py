"""Plants' data for the demo and the FL benchmark: generated boards, or DeepPCB partitioned by board group.

Every image is a ``LabeledImage``: grayscale, with its verdict and boxes as (class, x1, y1, x2, y2) pixels with
DeepPCB's six classes; read with ``reference``, it also carries its board's golden template, and ``model_input`` is
then the 3-channel comparison of ``edge.inference.images.reference_composite``. A ``Plant`` has a training split
(labeled at the edge) and a test split (never trained on, scored in the report). Plants differ (non-IID):
generated plants by board style, defect mix, lighting and noise; DeepPCB plants by board design (its groups), with
the remaining groups held out as boards no plant trained on. With ``kinds_per_plant`` plants also differ in what
they have seen: each plant's training boards hold only some defect kinds (``plant_kinds``), while every test split
and the unseen boards hold them all, so no plant alone knows every defect.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.errors import ImageError
from edge.inference.images import check_template_size, reference_composite
from edge.labels import pair_stem
from edge.training.dataset import PixelBox
from fedinspect.synthetic import DEFECT_CLASSES, PlantStyle, make_board
from schemas.manifests import ProposalSpec


@dataclass(frozen=True)
class LabeledImage:
    name: str
    image: np.ndarray
    defective: bool
    boxes: list[PixelBox]
    template: np.ndarray | None = None
    """The board's golden template (aligned, the same size), when the data was read with ``reference``."""

    def box_labels(self, classes: Sequence[str]) -> list[dict[str, Any]]:
        """The boxes as a training sample's labels (``TrainingSample.boxes``: x1 y1 x2 y2 class_name)."""
        return [
            {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class_name": classes[kind]} for kind, x1, y1, x2, y2 in self.boxes
        ]

    def model_input(self) -> np.ndarray:
        """What a model trained on this data sees: the image compared with its template when it has one."""
        return self.image if self.template is None else reference_composite(self.image, self.template, source=self.name)


@dataclass(frozen=True)
class Plant:
    name: str
    train: list[LabeledImage]
    test: list[LabeledImage]


DEEPPCB_PROPOSALS = ProposalSpec()
"""The proposal step for DeepPCB's 640 px scans: the default of ``ProposalSpec``."""


@dataclass(frozen=True)
class PlantData:
    plants: list[Plant]
    unseen: list[LabeledImage]
    """Test images of boards no plant trained on (another style, or held-out DeepPCB groups)."""
    classes: tuple[str, ...] = DEFECT_CLASSES
    proposals: ProposalSpec = DEEPPCB_PROPOSALS
    """The proposal step that suits these boards (``edge.inference.proposals``): the default for DeepPCB's 640 px
    scans, ``GENERATED_PROPOSALS`` for generated boards."""
    crop_base_width: int | None = None
    """The template-crops networks' first-stage channels for these boards (None: the network's default, 32, with
    which every DeepPCB figure was measured); ``GENERATED_CROP_BASE_WIDTH`` for generated boards."""


GENERATED_CROP_BASE_WIDTH = 16
"""Template-crops networks half as wide (a quarter of the work) for generated boards. The crop detector pooled on
the demo's plants, 12 epochs, scored on validation boards from their training boards: mAP50 0.824 at 16 against
0.834 at 32, in 94 s against 212 s. The demo with both lines at 16 took 13.3 min against 19.5 min with the crop
classifier at 32; its global classifier ended 1.5-2 points below two plants alone at 16 (one run), 11 points below
one plant (one run of two) at 32: a spread of runs, not of widths (docs/benchmarks.md)."""
GENERATED_PROPOSALS = ProposalSpec(group_px=3, fine_group_px=1, pad_px=2, min_box_px=10, crop_px=32)
"""The proposal step for generated boards (256 px, defects 3-30 px boxed 2 px beyond what they changed; crops of
32 px, as their windows are 15-45 px: the crop detector pooled on the demo's plants scored the same on validation
boards at 32 and 48 px, in half the time). Measured
on 10 generated test boards of each plant style and of the unseen style at 256 px, as the share of labeled boxes
framed by a candidate at IoU >= 0.5 (>= 0.3): this 0.82 (0.91), with 8 candidates per defective and 3 per good
board (0.85 (0.94) on the demo's validation boards once boards were labeled by their visible defects only,
``synthetic.VISIBLE_CORE_PX``); a 9 px grouping 0.70 (0.85); a 2 px opening 0.38, with 40 candidates a board
(the 1-2 px shift of a re-acquisition survives it); DeepPCB's default (10 px padding, 30 px smallest box) 0.00.
Generated boards put defects a few pixels apart, which the 3 px grouping merges: the second grouping without
dilation (``fine_group_px=1``), with candidates cut to the image, frames 0.91 (0.96) of the validation boards'
defects against 0.85 (0.94), with 6.9 candidates a board against 6.2; ``bench fl`` on the demo's plants (validation,
4 rounds x 3 epochs) then scores the crop detector pooled 0.870 mAP50 against 0.827, federated 0.766 against 0.692."""
GOOD_SHIFT_PX = (1, 2)
"""How far a re-acquired board moves against its template, in x and in y (either sign), at native resolution."""
GOOD_SPECKS = (4, 12)
"""How many salt-and-pepper specks (1-3 px squares) a re-acquired board gets, like DeepPCB test images' noise."""


def reacquire(image: np.ndarray, rng: np.random.Generator, *, noise: float = 0.0) -> tuple[np.ndarray, int, int]:
    """The board in ``image`` as the camera would see it again: (new image, dx, dy).

    A good sample must not be its own template: compared with itself it is trivially good, and a classifier that
    learns "no difference at all = good" calls every real good board, never perfectly aligned, defective. The
    recipe (docs/benchmarks.md): shift by 1-2 px in x and in y (random signs, edges replicated), a 3x3 Gaussian
    blur, re-binarize at the midpoint of the image's dark and bright levels (1st and 99th percentiles) back to
    those levels, then 4-12 salt-and-pepper specks of 1-3 px; ``noise`` > 0 adds Gaussian noise of that sigma
    afterwards (generated plants' scanner noise). Boxes on ``image`` move by (dx, dy).
    """
    import cv2

    height, width = image.shape[:2]
    dx, dy = (int(rng.integers(GOOD_SHIFT_PX[0], GOOD_SHIFT_PX[1] + 1)) * int(rng.choice((-1, 1))) for _ in "xy")
    shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], np.float32)
    moved = cv2.warpAffine(image, shift, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    blurred = cv2.GaussianBlur(moved, (3, 3), 0)
    dark, bright = (float(v) for v in np.percentile(image, (1, 99)))
    result = np.where(blurred >= (dark + bright) / 2, bright, dark).astype(np.uint8)
    for _ in range(int(rng.integers(GOOD_SPECKS[0], GOOD_SPECKS[1] + 1))):
        side = int(rng.integers(1, 4))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        result[y : y + side, x : x + side] = bright if rng.integers(0, 2) else dark
    if noise > 0:
        noisy = result.astype(np.float32) + rng.normal(0.0, noise, result.shape).astype(np.float32)
        result = np.clip(noisy, 0, 255).astype(np.uint8)
    return result, dx, dy


def plant_kinds(index: int, plants: int, kinds_per_plant: int, kinds: int = len(DEFECT_CLASSES)) -> tuple[int, ...]:
    """The defect kinds plant ``index`` of ``plants`` has seen: ``kinds_per_plant`` consecutive kinds (cyclic),
    starting where an even deal of the kinds over the plants puts it. With 3 plants and 4 of 6 kinds: plant a
    0-3, plant b 2-5, plant c 4-1; every kind is known to two plants and no plant knows all of them."""
    if not 1 <= kinds_per_plant <= kinds:
        raise ValueError(f"kinds per plant must be 1..{kinds}, got {kinds_per_plant}")
    start = index * kinds // plants
    return tuple(sorted((start + offset) % kinds for offset in range(kinds_per_plant)))


KIND_PAINT_MARGIN_PX = 2
"""A removed defect's box grows by this much before the template is painted over it (annotations are tight)."""


def without_kinds(image: LabeledImage, template: np.ndarray, kept: tuple[int, ...]) -> LabeledImage:
    """``image`` as a plant whose process never makes the other kinds would see it: every defect of a kind not in
    ``kept`` painted over with the template's pixels (aligned, the same size), its box dropped; kept defects stay
    untouched (the paint stops at their boxes). A board left with no defect is labeled good: it is a real scan
    of a defect-free board."""
    removed = [box for box in image.boxes if box[0] not in kept]
    if not removed:
        return image
    if template.shape != image.image.shape:
        raise ValueError(f"{image.name}: template {template.shape} differs from the image {image.image.shape}")
    height, width = image.image.shape[:2]
    paint = np.zeros((height, width), bool)
    for _, x1, y1, x2, y2 in removed:
        grown = [int(x1) - KIND_PAINT_MARGIN_PX, int(y1) - KIND_PAINT_MARGIN_PX]
        grown += [int(np.ceil(x2)) + KIND_PAINT_MARGIN_PX + 1, int(np.ceil(y2)) + KIND_PAINT_MARGIN_PX + 1]
        paint[max(grown[1], 0) : min(grown[3], height), max(grown[0], 0) : min(grown[2], width)] = True
    boxes = [box for box in image.boxes if box[0] in kept]
    for _, x1, y1, x2, y2 in boxes:
        paint[int(y1) : int(np.ceil(y2)) + 1, int(x1) : int(np.ceil(x2)) + 1] = False
    pixels = image.image.copy()
    pixels[paint] = _aligned(template, image.image)[paint]
    return dataclasses.replace(image, image=pixels, boxes=boxes, defective=bool(boxes))


ALIGN_REACH_PX = 3
"""How far a scan may sit from its template, in x and in y (DeepPCB's test images: 0-3 px)."""


def _aligned(template: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``template`` moved by the whole-pixel shift (within ``ALIGN_REACH_PX``) that best matches ``image``, so a patch
    of it pasted into the scan leaves no seam."""
    import cv2

    height, width = image.shape[:2]
    best, best_cost = template, float("inf")
    for dy in range(-ALIGN_REACH_PX, ALIGN_REACH_PX + 1):
        for dx in range(-ALIGN_REACH_PX, ALIGN_REACH_PX + 1):
            shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], np.float32)
            moved = cv2.warpAffine(
                template, shift, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
            )
            cost = float(cv2.absdiff(moved, image).sum())
            if cost < best_cost:
                best, best_cost = moved, cost
    return best


def _moved(boxes: list[PixelBox], dx: int, dy: int, size: int) -> list[PixelBox]:
    return [
        (
            kind,
            min(max(x1 + dx, 0), size - 1),
            min(max(y1 + dy, 0), size - 1),
            min(max(x2 + dx, 0), size - 1),
            min(max(y2 + dy, 0), size - 1),
        )
        for kind, x1, y1, x2, y2 in boxes
    ]


PLANT_STYLES = (
    # thin bright traces, mostly opens and shorts
    PlantStyle(trace_width=(3, 6), copper=240, substrate=15, noise=4.0, defect_weights=(4, 4, 1, 1, 1, 1)),
    # thick traces, darker and noisier scans, mostly mousebites and spurs
    PlantStyle(
        trace_width=(7, 11), pad_radius=(9, 14), copper=200, substrate=35, noise=10.0, defect_weights=(1, 1, 4, 4, 1, 1)
    ),
    # dense boards, stray copper and pin-holes
    PlantStyle(traces=(10, 16), copper=225, substrate=25, noise=7.0, defect_weights=(1, 1, 1, 1, 4, 4)),
)
UNSEEN_STYLE = PlantStyle(trace_width=(5, 8), traces=(8, 12), copper=215, substrate=30, noise=8.0)


def _boards(
    name: str, style: PlantStyle, boards: int, size: int, rng: np.random.Generator, reference: bool
) -> list[LabeledImage]:
    """Each board gives a good and a defective image, like DeepPCB's pairs. Without ``reference`` they are the
    template and the defective copy, each with its own scanner noise. With it, both are re-acquired against the
    template (``reacquire``: shifted, re-binarized, specks and noise), as real boards are: a good image is never its
    own template, and a defective one is no better aligned than a good one."""
    images = []
    for index in range(boards):
        board = make_board(rng, size, style, int(rng.integers(3, 13)))  # DeepPCB: 3-12 defects a board
        boxes = [(kind, float(x1), float(y1), float(x2), float(y2)) for x1, y1, x2, y2, kind in board.defects]
        good, defective, template = board.template, board.defective, None
        if reference:
            template = board.template
            good, _, _ = reacquire(board.template, rng, noise=style.noise)
            defective, dx, dy = reacquire(board.defective, rng, noise=style.noise)
            boxes = _moved(boxes, dx, dy, size)
        images.append(LabeledImage(f"{name}-{index:04d}_temp", good, False, [], template))
        # a board whose every defect changed too few pixels to see is a good board (``synthetic.MIN_DEFECT_PIXELS``)
        images.append(LabeledImage(f"{name}-{index:04d}_test", defective, bool(boxes), boxes, template))
    return images


def synthetic_plants(
    count: int = 3,
    *,
    train_boards: int = 40,
    test_boards: int = 15,
    size: int = 256,
    seed: int = 0,
    reference: bool = False,
    kinds_per_plant: int | None = None,
) -> PlantData:
    """``count`` plants of generated boards (styles cycle through PLANT_STYLES), plus an unseen-style test set.

    ``reference``: every image carries its board's template (a template its own), for ``model_input``.
    ``kinds_per_plant``: a plant's training boards get only the defects of its ``plant_kinds``; its test boards
    keep its style's mix of every kind.
    """
    rng = np.random.default_rng(seed)
    plants = []
    for index in range(count):
        name = f"plant-{chr(ord('a') + index)}"
        style = PLANT_STYLES[index % len(PLANT_STYLES)]
        trained_style = style
        if kinds_per_plant is not None:
            kept = plant_kinds(index, count, kinds_per_plant)
            weights = tuple(w if kind in kept else 0.0 for kind, w in enumerate(style.defect_weights))
            trained_style = dataclasses.replace(style, defect_weights=weights)
        plants.append(
            Plant(
                name,
                _boards(f"{name}-train", trained_style, train_boards, size, rng, reference),
                _boards(f"{name}-test", style, test_boards, size, rng, reference),
            )
        )
    return PlantData(
        plants,
        _boards("unseen", UNSEEN_STYLE, test_boards, size, rng, reference),
        proposals=GENERATED_PROPOSALS,
        crop_base_width=GENERATED_CROP_BASE_WIDTH,
    )


def read_deeppcb(root: Path, *, size: int | None = None, reference: bool = False) -> dict[str, list[LabeledImage]]:
    """DeepPCB's trainval pairs by board group: each pair's good sample (a re-acquisition of its template, named
    like the template file) and test image (with its defects).

    ``size`` resizes the 640x640 images (boxes scaled with them). ``reference``: each image carries the pair's
    template (the template itself), for ``model_input``. Raises ``ValueError`` naming a bad line or
    file.
    """
    import cv2

    listing = root / "trainval.txt"
    if not listing.is_file():
        raise ValueError(f"{root}: no trainval.txt; expected the DeepPCB layout (see its README)")
    groups: dict[str, list[LabeledImage]] = {}
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{listing} line {number}: expected 'image_path annotation_path', got {line!r}")
        image_path, annotation_path = parts
        group = image_path.split("/", 1)[0]
        stem = Path(image_path).stem
        pair = []
        for suffix, defective in (("_temp", False), ("_test", True)):
            file = root / Path(image_path).with_name(f"{stem}{suffix}.jpg")
            image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise ValueError(f"{file}: missing or not an image (listed in {listing} line {number})")
            pair.append((file, image, defective))
        # DeepPCB's good image is the template itself: the good sample is a re-acquisition of it (``reacquire``),
        # seeded by the pair's name so every run, arm and resolution sees the same one
        good, _, _ = reacquire(pair[0][1], np.random.default_rng(zlib.crc32(stem.encode())))
        pair.insert(1, (pair[0][0], good, False))
        if reference:  # before any resizing, which would make a misaligned template the same size
            try:
                check_template_size(pair[-1][1], pair[0][1], source=str(pair[-1][0]))
            except ImageError as exc:
                raise ValueError(str(exc)) from None
        scale = 1.0 if size is None else size / pair[0][1].shape[1]
        boxes: list[PixelBox] = []
        for row in (root / annotation_path).read_text().splitlines():
            values = row.replace(",", " ").split()
            if len(values) != 5:
                continue
            x1, y1, x2, y2, kind = (int(float(v)) for v in values)
            if not 1 <= kind <= len(DEFECT_CLASSES):
                raise ValueError(f"{root / annotation_path}: defect type {kind} is not 1..{len(DEFECT_CLASSES)}")
            boxes.append((kind - 1, x1 * scale, y1 * scale, x2 * scale, y2 * scale))
        if size is not None:
            pair = [(file, cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), d) for file, image, d in pair]
        template = pair[0][1] if reference else None
        for file, image, defective in pair[1:]:
            groups.setdefault(group, []).append(
                LabeledImage(file.stem, image, defective, boxes if defective else [], template)
            )
    return groups


def deeppcb_plants(
    root: Path,
    *,
    plants: int = 3,
    held_out_groups: int = 1,
    test_fraction: float = 0.2,
    size: int | None = None,
    seed: int = 0,
    reference: bool = False,
    kinds_per_plant: int | None = None,
) -> PlantData:
    """DeepPCB partitioned by board group into ``plants`` plants; the last ``held_out_groups`` groups are unseen.

    ``kinds_per_plant``: each plant's training images keep only the defects of its ``plant_kinds`` (the others
    painted over with the board's template, ``without_kinds``); test splits and unseen boards keep every defect.
    """
    groups = read_deeppcb(root, size=size, reference=reference or kinds_per_plant is not None)
    names = sorted(groups)
    if len(names) < plants + held_out_groups:
        raise ValueError(f"{root}: {len(names)} board groups, need {plants} plants + {held_out_groups} held out")
    rng = np.random.default_rng(seed)
    trained, unseen = names[: len(names) - held_out_groups], names[len(names) - held_out_groups :]
    result = []
    for index in range(plants):
        images = [image for group in trained[index::plants] for image in groups[group]]
        # split by pair (template and test image of one spot stay together)
        pairs = sorted({pair_stem(image.name) for image in images})
        test_pairs = set(rng.choice(pairs, size=max(1, int(len(pairs) * test_fraction)), replace=False).tolist())
        train = [i for i in images if pair_stem(i.name) not in test_pairs]
        if kinds_per_plant is not None:
            kept = plant_kinds(index, plants, kinds_per_plant)
            train = [without_kinds(i, i.template, kept) if i.template is not None else i for i in train]
        test = [i for i in images if pair_stem(i.name) in test_pairs]
        result.append(Plant(f"plant-{chr(ord('a') + index)}", train, test))
    data = PlantData(result, [image for group in unseen for image in groups[group]])
    return data if reference else _without_templates(data)


def _without_templates(data: PlantData) -> PlantData:
    def bare(images: list[LabeledImage]) -> list[LabeledImage]:
        return [dataclasses.replace(image, template=None) for image in images]

    plants = [Plant(plant.name, bare(plant.train), bare(plant.test)) for plant in data.plants]
    return dataclasses.replace(data, plants=plants, unseen=bare(data.unseen))


def load_plants(
    deeppcb: Path | None,
    *,
    plants: int,
    size: int | None,
    seed: int,
    train_boards: int,
    test_boards: int,
    reference: bool = False,
    kinds_per_plant: int | None = None,
) -> PlantData:
    """DeepPCB partitioned into ``plants`` (when ``deeppcb`` is its folder), else that many plants of generated
    boards (``train_boards`` / ``test_boards`` each); images ``size`` px (None: DeepPCB's own 640 px, generated
    boards 256 px), compared with templates if ``reference``; ``kinds_per_plant``: each plant has trained on only
    some defect kinds (``plant_kinds``)."""
    if deeppcb is not None:
        return deeppcb_plants(
            deeppcb, plants=plants, size=size, seed=seed, reference=reference, kinds_per_plant=kinds_per_plant
        )
    return synthetic_plants(
        plants,
        train_boards=train_boards,
        test_boards=test_boards,
        size=256 if size is None else size,
        seed=seed,
        reference=reference,
        kinds_per_plant=kinds_per_plant,
    )


def write_plant_data(data: PlantData, out: Path, *, source: dict[str, object]) -> dict[str, object]:
    """Write every plant (and the unseen boards) as training data a plant engineer can use directly.

    Per plant: ``detect/`` a YOLO detection dataset (images/ and labels/ with train and val = the plant's test
    split; templates are background images with empty label files; data.yaml) and ``classify/`` an image-folder
    classification dataset (``train|val/good|defective/*.png``). ``unseen/`` holds only val. ``out`` must not exist
    or be empty; everything is written to a sibling staging folder first and renamed at the end, so a failed run
    leaves nothing half-written. Returns the summary also written to ``out/dataset.json``.
    """
    import json
    import shutil

    import cv2

    from edge.training.dataset import write_data_yaml, write_yolo_sample

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose a new output folder")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    written: dict[str, dict[str, dict[str, int]]] = {}
    summary: dict[str, object] = {"source": source, "classes": list(data.classes), "plants": written}
    parts: list[tuple[str, tuple[tuple[str, list[LabeledImage]], ...]]] = [
        (plant.name, (("train", plant.train), ("val", plant.test))) for plant in data.plants
    ]
    if data.unseen:
        parts.append(("unseen", (("val", data.unseen),)))
    try:
        for name, splits in parts:
            counts: dict[str, dict[str, int]] = {}
            for split, images in splits:
                count = counts.setdefault(split, {"good": 0, "defective": 0, "boxes": 0})
                for item in images:
                    verdict = "defective" if item.defective else "good"
                    image = item.model_input()
                    write_yolo_sample(staging / name / "detect", split, item.name, image, item.boxes)
                    folder = staging / name / "classify" / split / verdict
                    folder.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(folder / f"{item.name}.png"), image):
                        raise OSError(f"{folder / item.name}.png: could not be written")
                    count[verdict] += 1
                    count["boxes"] += len(item.boxes)
            (staging / name / "detect" / "images" / "train").mkdir(parents=True, exist_ok=True)
            write_data_yaml(staging / name / "detect", data.classes)
            written[name] = counts
        (staging / "dataset.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # data.yaml holds absolute paths; point them at the final folder
    for name, _ in parts:
        write_data_yaml(out / name / "detect", data.classes)
    return summary
