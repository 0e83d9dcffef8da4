"""The proposal step of template-crops detectors: candidates where a board differs from its template, their crops."""

from __future__ import annotations

import numpy as np
import pytest

from edge.inference.detector import box_iou
from edge.inference.images import reference_composite
from edge.inference.proposals import (
    CROP_BORDER,
    boxes_from_crops,
    boxes_to_crops,
    crop_windows,
    cut_crops,
    difference_proposals,
)
from schemas.manifests import ProposalSpec
from tests.support.models import board_pairs


def test_every_defect_is_a_candidate_and_alignment_edges_are_not() -> None:
    spec = ProposalSpec()
    found = total = 0
    for image, template, boxes in board_pairs(12, seed=1):
        candidates = difference_proposals(reference_composite(image, template), spec)
        if not boxes:
            # a 1 px shift traces every track edge, thinner than the opening: no candidate at all
            assert len(candidates) == 0
            continue
        truth = np.array([b[1:] for b in boxes], np.float32)
        overlap = box_iou(truth, candidates)
        found += int((overlap.max(axis=1) >= 0.5).sum())
        total += len(boxes)
    assert total > 0 and found == total


def test_boxes_are_padded_to_the_smallest_size_and_capped_in_number() -> None:
    template = np.full((200, 200), 255, np.uint8)
    image = template.copy()
    for x in range(20, 200, 30):  # six 5x5 specks of copper, each its own candidate
        image[50:55, x : x + 5] = 0
    image[120:150, 40:100] = 0  # one large blob
    composite = reference_composite(image, template)
    boxes = difference_proposals(composite, ProposalSpec(min_box_px=30, pad_px=2))
    assert len(boxes) == 7
    assert np.all(boxes[:, 2:] - boxes[:, :2] >= 30 - 1e-3)
    np.testing.assert_allclose(boxes[0], [38, 118, 102, 152])  # the largest first, its pixels padded by 2
    assert len(difference_proposals(composite, ProposalSpec(max_proposals=3))) == 3


def test_a_second_grouping_names_defects_the_first_one_merged() -> None:
    template = np.full((120, 120), 255, np.uint8)
    image = template.copy()
    image[40:50, 40:50] = 0  # two specks 2 px apart: one group at a 5 px dilation
    image[40:50, 52:62] = 0
    image[90:100, 90:100] = 0  # one alone: a candidate of both groupings, kept once
    composite = reference_composite(image, template)
    coarse = ProposalSpec(group_px=5, pad_px=0, min_box_px=1)
    assert len(difference_proposals(composite, coarse)) == 2
    both = difference_proposals(composite, coarse.model_copy(update={"fine_group_px": 1}))
    np.testing.assert_allclose(both, [[40, 40, 62, 50], [90, 90, 100, 100], [40, 40, 50, 50], [52, 40, 62, 50]])


def test_candidates_near_the_border_stay_inside_the_image() -> None:
    template = np.full((100, 80), 255, np.uint8)
    image = template.copy()
    image[0:4, 76:80] = 0  # a speck in the top right corner, padded and widened past the image
    boxes = difference_proposals(reference_composite(image, template), ProposalSpec(pad_px=2, min_box_px=12))
    np.testing.assert_allclose(boxes, [[72, 0, 80, 8]])


def test_a_grayscale_image_is_refused() -> None:
    with pytest.raises(ValueError, match="3 channels"):
        difference_proposals(np.zeros((32, 32), np.uint8), ProposalSpec())


def test_crop_coordinates_round_trip_and_outside_is_blank_board() -> None:
    spec = ProposalSpec(crop_px=32, context=2.0)
    boxes = np.array([[10, 10, 30, 20], [-5, -5, 15, 15]], np.float32)
    windows = crop_windows(boxes, spec)
    np.testing.assert_allclose(windows[0], [0, -5, 40, 35])  # 2 x the longer side (20), around the centre
    np.testing.assert_allclose(boxes_from_crops(boxes_to_crops(boxes, windows), windows), boxes, atol=1e-4)
    composite = np.zeros((64, 64, 3), np.uint8)
    crops = cut_crops(composite, windows, spec)
    assert [c.shape for c in crops] == [(32, 32, 3), (32, 32, 3)]
    assert tuple(int(v) for v in crops[1][0, 0]) == CROP_BORDER  # above and left of the image
    assert tuple(int(v) for v in crops[1][-1, -1]) == (0, 0, 0)  # inside it
