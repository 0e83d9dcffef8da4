"""Fine-tune a template-crops classifier (``exporters.crop_detector.export_crop_classifier``) on verdicts, and on
the boxes a plant drew where it has them.

A board's candidates (``edge.inference.proposals``) are the instances of multiple-instance learning: the edge calls
a board as defective as its most defect-like candidate (``edge.inference.classifier.CropClassifier``), and training
does the same. Every candidate of a good board is background (cross-entropy on each of its crops, and on the board
score, its most defect-like crop); a defective board's most defect-like candidate is a defect (cross-entropy on the
board score). So a plant trains it from good / defective labels, no boxes drawn: the network finds out which
candidate made the board defective, since no candidate on a good board ever does. Verdicts alone teach only the
one most defect-like crop of a defective board, so a board with a faint defect beside a plain one teaches nothing
about the faint kind (on DeepPCB the escapes were small missing-copper defects). Where a defective board has
labeled boxes (drawn for the detector), its crops are labeled too (``labeled_board``): a candidate overlapping a
box at IoU >= ``POSITIVE_IOU`` is a defect, one touching no box is background, and ``JITTERED_COPIES`` crops around
every box are defects, as in the crop detector's trainer; the rest still learn only through the board score. Good
and defective boards are weighed by inverse frequency when class balancing is on. A defective board without boxes
that differs from its template nowhere cannot be learned: it is skipped and counted. AdamW with a one-cycle
schedule, random flips of whole crops, FedProx as a proximal step after each optimizer step, as in the crop
detector's trainer; ``batch_size`` counts crops per step (as for the crop detector), whole boards at a time.
Board accuracy (at a board score of 0.5, the default ``inspection.defect_threshold``) and loss on the holdout are
measured before and after, with the board score the edge serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge.inference.detector import box_iou
from edge.inference.proposals import candidate_crops, crop_windows, cut_crops, difference_proposals
from edge.training.classifier import class_indices, class_weights, load_images
from edge.training.crop_detector import POSITIVE_IOU, as_tensor, jittered_boxes, start_crop_training
from edge.training.fedprox import proximal_step
from edge.training.jobs import StageClock, TrainingError, TrainingJob, TrainingResult, TrainingSample, progress_line
from schemas.manifests import CROP_DEFECT_CLASS_PARAM, ProposalSpec
from schemas.messages import TrainScope
from schemas.tensors import state_delta

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SERVED_THRESHOLD = 0.5
"""The board score above which the edge says defective (``CropClassifier``)."""
UNKNOWN = -1
"""A crop's target where only its board's verdict is known."""


def board_crops(composite: np.ndarray, spec: ProposalSpec) -> np.ndarray:
    """A board's candidate crops as served, (N, S, S, 3) uint8; N is 0 where it differs from its template nowhere."""
    _, crops = candidate_crops(composite, spec)
    return np.stack(crops) if crops else np.zeros((0, spec.crop_px, spec.crop_px, 3), np.uint8)


def sample_boxes(sample: TrainingSample) -> np.ndarray:
    """A sample's labeled boxes (N, 4) x1 y1 x2 y2 in pixels, whatever defect kind each names: to the classifier
    every kind is a defect."""
    rows = [[float(box[key]) for key in ("x1", "y1", "x2", "y2")] for box in sample.boxes]
    return np.array(rows, np.float32).reshape(-1, 4)


def labeled_board(
    composite: np.ndarray, boxes: np.ndarray, defective: bool, spec: ProposalSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A training board's crops (N, S, S, 3) uint8 and each crop's target (N,) int8: 1 defect, 0 background,
    ``UNKNOWN``. A good board's candidates are background; a defective board's are unknown, unless it has labeled
    ``boxes``: then a candidate overlapping one at IoU >= ``POSITIVE_IOU`` is a defect, one touching none is
    background, and jittered crops around every box are added as defects."""
    candidates = difference_proposals(composite, spec)
    targets = np.full(len(candidates), UNKNOWN if defective else 0, np.int8)
    if defective and len(boxes):
        if len(candidates):
            overlap = box_iou(candidates, boxes).max(axis=1)
            targets = np.where(overlap >= POSITIVE_IOU, 1, np.where(overlap <= 0, 0, UNKNOWN)).astype(np.int8)
        candidates = np.concatenate([candidates, jittered_boxes(boxes, rng)])
        targets = np.concatenate([targets, np.ones(len(candidates) - len(targets), np.int8)])
    crops = cut_crops(composite, crop_windows(candidates, spec), spec)
    return (np.stack(crops) if crops else np.zeros((0, spec.crop_px, spec.crop_px, 3), np.uint8)), targets


def defect_logits(net: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """Each crop's log-odds of being a defect (the network's two logits: background, defect)."""
    logits, _ = net(crops)
    difference: torch.Tensor = logits[:, 1] - logits[:, 0]
    return difference


def board_defect_scores(
    net: torch.nn.Module, boards: Sequence[np.ndarray], scale: float, *, batch_crops: int = 512
) -> np.ndarray:
    """Each board's score as the edge serves it: the defect probability of its most defect-like crop (0 with no
    crop). ``boards`` are ``board_crops`` outputs."""
    import torch

    device = next(net.parameters()).device
    net.eval()
    scores = np.zeros(len(boards), np.float32)
    owners = np.concatenate([np.full(len(crops), index) for index, crops in enumerate(boards)] + [np.zeros(0, int)])
    every = [crop for crops in boards for crop in crops]
    probabilities = np.zeros(len(every), np.float32)
    with torch.no_grad():
        for start in range(0, len(every), batch_crops):
            chunk = as_tensor(every[start : start + batch_crops], scale).to(device)
            probabilities[start : start + len(chunk)] = torch.sigmoid(defect_logits(net, chunk)).cpu().numpy()
    np.maximum.at(scores, owners.astype(np.int64), probabilities)
    return scores


def board_loss(
    logits: torch.Tensor,
    owners: torch.Tensor,
    targets: torch.Tensor,
    defective: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The loss of a batch of boards: ``logits`` per crop, ``owners`` the board index of each crop, ``targets`` each
    crop's target (1, 0 or ``UNKNOWN``, see ``labeled_board``), ``defective`` (B,) the boards' verdicts,
    ``weights`` (B,) each board's weight. Per board: cross-entropy of its most defect-like crop against its
    verdict, plus the mean cross-entropy of its crops whose targets are known."""
    import torch
    import torch.nn.functional as functional

    boards = len(defective)
    worst = torch.full((boards,), -torch.inf, dtype=logits.dtype, device=logits.device)
    worst = worst.scatter_reduce(0, owners, logits, reduce="amax")
    loss = functional.binary_cross_entropy_with_logits(worst, defective.to(logits.dtype), reduction="none")
    # every crop whose target is known learns, not only a board's worst one: a denser signal
    known = (targets != UNKNOWN).to(logits.dtype)
    per_crop = functional.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0).to(logits.dtype), reduction="none"
    )
    known_per_board = torch.zeros(boards, dtype=logits.dtype, device=logits.device).index_add_(0, owners, known)
    crop_sum = torch.zeros(boards, dtype=logits.dtype, device=logits.device).index_add_(0, owners, per_crop * known)
    loss = loss + crop_sum / known_per_board.clamp(min=1)
    return (loss * weights).sum() / weights.sum().clamp(min=1e-9)


def train_crop_classifier(
    job: TrainingJob, report: Callable[[str], None]
) -> tuple[TrainingResult, dict[str, np.ndarray]]:
    """Train as ``job`` says; returns the result and the delta (trained minus global) per state tensor."""
    import torch

    from exporters.common import state_dict_arrays

    if job.settings.train_scope != TrainScope.ALL:
        raise TrainingError(
            f"run {job.run_id}: train_scope {job.settings.train_scope.value!r} needs a pretrained backbone; a "
            "template-crops classifier trains whole"
        )
    clock = StageClock()
    manifest, spec, net, base_state, rng = start_crop_training(job)
    named = manifest.architecture.params.get(CROP_DEFECT_CLASS_PARAM)
    if named != job.defect_class:  # the network's defect output is the class the architecture names
        raise TrainingError(
            f"run {job.run_id}: {manifest.name} makes a board {named!r} when a candidate is a defect, the edge's "
            f"inspection.defect_class is {job.defect_class!r}"
        )
    _, defect = class_indices(manifest, job.defect_class)
    scale = manifest.input.scale
    boards: list[np.ndarray] = []
    crop_targets: list[np.ndarray] = []
    verdicts: list[bool] = []
    unlearnable = boxed = 0
    loaded = load_images(job.train, manifest.input)
    for sample, composite in loaded:
        defective = sample.verdict == manifest.classes[defect]
        boxes = sample_boxes(sample) if defective else np.zeros((0, 4), np.float32)
        crops, targets = labeled_board(composite, boxes, defective, spec, rng)
        if not len(crops):  # a good board without candidates teaches nothing; a defective one cannot be learned
            unlearnable += defective
            continue
        boards.append(crops)
        crop_targets.append(targets)
        verdicts.append(defective)
        boxed += bool(len(boxes))
    if not loaded:
        raise TrainingError(f"run {job.run_id}: none of the {len(job.train)} training images could be read")
    if not boards:
        raise TrainingError(
            f"run {job.run_id}: the {len(loaded)} training images differ from their templates nowhere: nothing to learn"
        )
    if unlearnable:
        log.warning(
            "defective boards without candidates skipped",
            extra={"run_id": job.run_id, "boards": unlearnable, "of": len(loaded)},
        )
    holdout = [
        (sample.verdict == manifest.classes[defect], board_crops(composite, spec))
        for sample, composite in load_images(job.holdout, manifest.input)
    ]

    def evaluate() -> dict[str, float]:
        if not holdout:
            return {}
        truth = np.array([verdict for verdict, _ in holdout], bool)
        scores = board_defect_scores(net, [crops for _, crops in holdout], scale).astype(np.float64)
        clipped = np.clip(scores, 1e-7, 1 - 1e-7)
        loss = -np.where(truth, np.log(clipped), np.log(1 - clipped)).mean()
        hits = (scores > SERVED_THRESHOLD) == truth
        return {"accuracy": float(hits.mean()), "loss": float(loss), "holdout_size": float(len(holdout))}

    clock.lap("prepare")
    before = evaluate()
    clock.lap("score")
    labels = np.array(verdicts, np.int64)
    board_weights = (
        class_weights(labels, 2)[labels] if job.class_balancing else np.ones(len(labels), np.float32)
    ).astype(np.float32)
    settings = job.settings
    # every epoch's steps drawn up front: the one-cycle schedule spans exactly the steps there will be
    epochs = [_batches(boards, settings.batch_size, rng) for _ in range(settings.local_epochs)]
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.learning_rate, total_steps=sum(len(steps) for steps in epochs)
    )
    anchors = [p.detach().clone() for p in net.parameters()]
    epochs_done, stopped_early = 0, False
    for epoch, steps in enumerate(epochs):
        net.train()
        total, seen = 0.0, 0
        for chosen in steps:
            x = as_tensor([crop for index in chosen for crop in boards[index]], scale)
            if job.augmentation.horizontal_flip and rng.random() < 0.5:
                x = x.flip(3)
            if job.augmentation.vertical_flip and rng.random() < 0.5:
                x = x.flip(2)
            owners = torch.from_numpy(np.repeat(np.arange(len(chosen)), [len(boards[i]) for i in chosen]))
            loss = board_loss(
                defect_logits(net, x.to(job.device)),
                owners.to(job.device),
                torch.from_numpy(np.concatenate([crop_targets[index] for index in chosen])).to(job.device),
                torch.from_numpy(labels[chosen].astype(bool)).to(job.device),
                torch.from_numpy(board_weights[chosen]).to(job.device),
            )
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
            proximal_step(net.parameters(), anchors, optimizer.param_groups[0]["lr"], settings.proximal_mu)
            if schedule.last_epoch + 1 < schedule.total_steps:  # the last step needs no next rate
                schedule.step()
            total += float(loss.detach()) * len(chosen)
            seen += len(chosen)
        epochs_done = epoch + 1
        report(progress_line(epochs_done, settings.local_epochs, loss=total / max(seen, 1)))
        if time.monotonic() - clock.started > job.deadline_s and epochs_done < settings.local_epochs:
            stopped_early = True
            break
    clock.lap("train")
    after = evaluate()
    clock.lap("score")
    trained = state_dict_arrays(net.cpu())
    result = clock.result(
        job.run_id,
        num_examples=len(boards),
        epochs=epochs_done,
        stopped_early=stopped_early,
        before=before,
        after=after,
    )
    log.info(
        "crop classifier trained",
        extra={
            "run_id": job.run_id,
            "boards": len(boards),
            "boxed": boxed,
            "skipped": unlearnable,
            "epochs": epochs_done,
        },
    )
    return result, state_delta(trained, base_state)


def _batches(boards: list[np.ndarray], crops_per_step: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Boards in a random order, grouped so that each step holds about ``crops_per_step`` crops and at least two
    boards (BatchNorm needs more than one sample; a last group of one board joins the one before)."""
    order = rng.permutation(len(boards))
    groups: list[list[int]] = [[]]
    held = 0
    for index in order.tolist():
        if held >= crops_per_step and len(groups[-1]) >= 2:
            groups.append([])
            held = 0
        groups[-1].append(index)
        held += len(boards[index])
    if len(groups) > 1 and len(groups[-1]) < 2:
        groups[-2] += groups.pop()
    return [np.array(group, np.int64) for group in groups]
