"""Generated boards are labeled as a person would label them: every box holds a defect thick enough to tell from a
board scanned 1-2 px off its template, boxed tightly."""

from __future__ import annotations

import cv2
import numpy as np

from fedinspect.synthetic import (
    LABEL_MARGIN_PX,
    MIN_DEFECT_PIXELS,
    VISIBLE_CORE_PX,
    PlantStyle,
    _changed_box,
    make_board,
)


def test_a_sliver_thinner_than_the_scan_offset_gets_no_box_and_a_blob_is_boxed_tightly() -> None:
    before = np.zeros((64, 64), np.uint8)
    sliver = before.copy()
    sliver[20:22, 10:40] = 255  # 60 changed pixels, 2 px thick: what a 2 px misregistration also makes
    assert _changed_box(before, sliver) is None
    blob = before.copy()
    blob[20:24, 10:14] = 255  # 4 x 4: a visible core
    assert _changed_box(before, blob) == (
        10 - LABEL_MARGIN_PX,
        20 - LABEL_MARGIN_PX,
        14 + LABEL_MARGIN_PX,
        24 + LABEL_MARGIN_PX,
    )


def test_every_generated_box_holds_a_visible_core_and_nothing_changed_is_left_unboxed() -> None:
    rng = np.random.default_rng(3)
    kernel = np.ones((VISIBLE_CORE_PX, VISIBLE_CORE_PX), np.uint8)
    drawn, faint = 0, 0
    for _ in range(12):
        board = make_board(rng, 256, PlantStyle(noise=0.0), 8)
        # noise-free template and defective copy differ only where a defect was drawn
        changed = (cv2.absdiff(board.template, board.defective) > 0).astype(np.uint8)
        inside = np.zeros_like(changed)
        for x1, y1, x2, y2, _kind in board.defects:
            core = cv2.morphologyEx(changed[y1:y2, x1:x2], cv2.MORPH_OPEN, kernel)
            faint += int(core.sum()) < MIN_DEFECT_PIXELS
            inside[y1:y2, x1:x2] = 1
        assert int((changed & (1 - inside)).sum()) == 0  # an invisible defect is not drawn at all
        drawn += len(board.defects)
    assert drawn >= 12 * 8 * 0.9  # a defect that cannot be seen is drawn elsewhere, not dropped
    assert faint <= drawn // 50  # only where a later defect was drawn over an earlier one
