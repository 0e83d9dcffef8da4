"""Where an image differs from its golden template: the candidates a template-crops detector names, and their crops.

A PCB defect is copper where the template has none or none where it has some, so on aligned binarized boards the
thresholded difference already finds nearly every defect (DeepPCB trainval: 93% of the labeled boxes overlap a
candidate at IoU >= 0.5 with the default ``ProposalSpec``); what is left to learn is which candidates are alignment
noise or dust and what kind each defect is. One candidate per connected group of difference pixels: a square
opening drops differences thinner than ``open_px`` (a 1-2 px misalignment traces every copper edge), a dilation of
``group_px`` joins the parts of one defect, and the box is the group's own difference pixels padded by ``pad_px``
and at least ``min_box_px`` wide and high (and cut to the image). A second, finer grouping (``fine_group_px``) adds
the groups the first one merged: defects a few pixels apart, which one candidate cannot name both of. The crop
around each box holds ``context`` times its longer side, so the network sees the defect in its surroundings at one
scale whatever the defect's size.

Training (``edge.training.crop_detector``) and serving (``edge.inference.crop_detector``) call the same functions
here, so a model sees the same candidates on the line as it was trained on.
"""

from __future__ import annotations

import numpy as np

from schemas.manifests import ProposalSpec

CROP_BORDER = (255, 255, 128)
"""What lies outside the image in a crop of the composite: white board in image and template, no difference."""


DUPLICATE_IOU = 0.9
"""A candidate of the second grouping overlapping one of the first this much is the same candidate."""


def difference_proposals(composite: np.ndarray, spec: ProposalSpec) -> np.ndarray:
    """Candidate boxes (N, 4) x1 y1 x2 y2 float32 in pixels of a composite (``reference_composite``: channel 0 the
    image, 1 its template), inside the image, the ``spec.max_proposals`` with the most difference pixels, largest
    first: the groups of ``spec.group_px``, and with ``spec.fine_group_px`` those of the finer grouping that are not
    one of them already (two defects a few pixels apart are one group of the first, two of the second)."""
    import cv2

    if composite.ndim != 3 or composite.shape[2] != 3:
        raise ValueError(f"a template comparison has 3 channels (image, template, difference), got {composite.shape}")
    difference = cv2.absdiff(composite[:, :, 0], composite[:, :, 1])
    _, mask = cv2.threshold(difference, spec.threshold, 255, cv2.THRESH_BINARY)
    if spec.open_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((spec.open_px, spec.open_px), np.uint8))
    found = _groups(mask, spec.group_px, spec)
    if spec.fine_group_px:
        fine = _groups(mask, spec.fine_group_px, spec)
        if found and fine:
            from edge.inference.detector import box_iou  # here: that module imports this one

            overlap = box_iou(_boxes(fine), _boxes(found)).max(axis=1)
            fine = [item for item, same in zip(fine, overlap >= DUPLICATE_IOU, strict=True) if not same]
        found += fine
    found.sort(key=lambda item: -item[0])
    boxes = _boxes(found[: spec.max_proposals])
    height, width = mask.shape
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def _groups(mask: np.ndarray, group_px: int, spec: ProposalSpec) -> list[tuple[int, float, float, float, float]]:
    """(difference pixels, x1, y1, x2, y2) of every group of the mask's pixels joined by a ``group_px`` dilation
    with at least ``spec.min_pixels`` of them, boxed around those pixels as ``spec`` pads and widens it."""
    import cv2

    grouped = cv2.dilate(mask, np.ones((group_px, group_px), np.uint8)) if group_px > 1 else mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    found: list[tuple[int, float, float, float, float]] = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        # the group's own difference pixels (the dilation only joined them)
        own = (labels[y : y + h, x : x + w] == label) & (mask[y : y + h, x : x + w] > 0)
        pixels = int(own.sum())
        if pixels < spec.min_pixels:
            continue
        rows, cols = np.nonzero(own)
        x1, x2 = x + cols.min(), x + cols.max() + 1
        y1, y2 = y + rows.min(), y + rows.max() + 1
        width = max(x2 - x1 + 2 * spec.pad_px, spec.min_box_px)
        height = max(y2 - y1 + 2 * spec.pad_px, spec.min_box_px)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        found.append((pixels, cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2))
    return found


def _boxes(found: list[tuple[int, float, float, float, float]]) -> np.ndarray:
    return np.array([item[1:] for item in found], dtype=np.float32).reshape(-1, 4)


def crop_windows(boxes: np.ndarray, spec: ProposalSpec) -> np.ndarray:
    """The square crop window (N, 4) x1 y1 x2 y2 around each box: ``spec.context`` times its longer side."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) * spec.context / 2
    return np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)


def cut_crops(composite: np.ndarray, windows: np.ndarray, spec: ProposalSpec) -> list[np.ndarray]:
    """Each window of the composite resampled to ``crop_px`` square (outside the image: blank board)."""
    import cv2

    crops = []
    for x1, y1, x2, _ in windows.tolist():
        step = (x2 - x1) / spec.crop_px  # source pixels per crop pixel
        warp = np.array([[1 / step, 0, -x1 / step], [0, 1 / step, -y1 / step]], dtype=np.float32)
        crops.append(
            cv2.warpAffine(
                composite,
                warp,
                (spec.crop_px, spec.crop_px),
                flags=cv2.INTER_AREA if step > 1 else cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=CROP_BORDER,
            )
        )
    return crops


def boxes_from_crops(relative: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Boxes predicted in crop coordinates (0-1 across the window) back to image pixels."""
    size = windows[:, 2:3] - windows[:, 0:1]
    return np.asarray(relative * size + windows[:, [0, 1, 0, 1]], dtype=np.float32)


def boxes_to_crops(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Image-pixel boxes in the crop coordinates of their windows (the network's box target)."""
    size = windows[:, 2:3] - windows[:, 0:1]
    return np.asarray((boxes - windows[:, [0, 1, 0, 1]]) / size, dtype=np.float32)


def candidate_crops(composite: np.ndarray, spec: ProposalSpec) -> tuple[np.ndarray, list[np.ndarray]]:
    """A composite's candidate windows (``crop_windows`` of its ``difference_proposals``) and their crops."""
    windows = crop_windows(difference_proposals(composite, spec), spec)
    return windows, cut_crops(composite, windows, spec)


def served_crops(
    images: list[np.ndarray], spec: ProposalSpec, model: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """What a template-crops model serves a batch with: each image as a composite, its candidate windows, and the
    crops of all images in order. ValueError naming ``model`` for an image that is not a template comparison."""
    from edge.inference.images import normalize_image

    composites, windows, crops = [], [], []
    for image in images:
        composite = normalize_image(image)
        if composite.ndim != 3:
            raise ValueError(f"{model} needs the image compared with its template (3 channels), got a grayscale image")
        found, cut = candidate_crops(composite, spec)
        composites.append(composite)
        windows.append(found)
        crops.extend(cut)
    return composites, windows, crops
