"""Fine-tune a template-crops detector (``exporters.crop_detector``) on the buffer's labeled boxes.

Every labeled image is compared with its template and cut into the crops the edge will serve: its candidates
(``edge.inference.proposals``), each labeled with the defect it overlaps (IoU >= ``POSITIVE_IOU``, with that
defect's box as the box target) or background; a good board's candidates are all background. Every labeled box also
gives ``JITTERED_COPIES`` crops around itself, shifted and scaled by up to ``JITTER`` of its size, so that defects
the proposal step frames badly are still learned. AdamW with a one-cycle learning-rate schedule, random flips and
quarter turns (boxes moved with them; a defect's kind does not depend on which way its board lies in the camera)
and lighting (``augmentation.brightness``, ``_relit``), cross-entropy on the class and smooth-L1
on the box of defect crops. FedProx is a proximal step after each optimizer step, as in the other trainers. mAP50
and mAP50-95 on the holdout are measured before and after, through the same decoding the edge serves with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from edge.inference.detector import Detections, box_iou, decode_crops
from edge.inference.proposals import boxes_to_crops, candidate_crops, crop_windows, cut_crops, difference_proposals
from edge.training.classifier import load_images
from edge.training.dataset import pixel_boxes
from edge.training.detection_map import LabeledBoxes, detection_map
from edge.training.fedprox import proximal_step
from edge.training.jobs import (
    StageClock,
    TrainingError,
    TrainingJob,
    TrainingResult,
    TrainingSample,
    progress_line,
)
from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest
from schemas.manifests import ModelManifest, ProposalSpec, TemplateInput
from schemas.messages import TrainScope
from schemas.tensors import state_delta

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

POSITIVE_IOU = 0.3
"""A candidate overlapping a labeled box this much is that defect (its crop still shows most of it)."""
JITTERED_COPIES = 2
JITTER = 0.2
BOX_LOSS_WEIGHT = 5.0
SCORING_CONFIDENCE = 0.001
"""Detections kept when measuring mAP (as Ultralytics' validator does)."""
SCORING_IOU = 0.7


def labeled_boxes(sample: TrainingSample, classes: list[str]) -> LabeledBoxes:
    """A sample's labeled boxes of known classes (an unknown class is logged and skipped)."""
    return LabeledBoxes.of(pixel_boxes(sample, classes))


def jittered_boxes(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``JITTERED_COPIES`` boxes around each labeled box, shifted and scaled by up to ``JITTER`` of its size: crops
    of defects as a proposal step that frames them badly would cut them."""
    sizes = np.repeat(boxes[:, 2:] - boxes[:, :2], JITTERED_COPIES, axis=0)
    shift = rng.uniform(-JITTER, JITTER, (len(sizes), 4)) * np.concatenate([sizes, sizes], axis=1)
    return np.asarray(np.repeat(boxes, JITTERED_COPIES, axis=0) + shift, dtype=np.float32)


def training_crops(
    composite: np.ndarray, truth: LabeledBoxes, spec: ProposalSpec, rng: np.random.Generator | None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One image's crops, class targets (0 background, k + 1 class k) and box targets in crop units;
    ``rng`` adds jittered crops around every labeled box (training only)."""
    boxes = difference_proposals(composite, spec)
    if rng is not None and len(truth.boxes):
        boxes = np.concatenate([boxes, jittered_boxes(truth.boxes, rng)])
    windows = crop_windows(boxes, spec)
    targets = np.zeros(len(boxes), np.int64)
    box_targets = np.zeros((len(boxes), 4), np.float32)
    if len(boxes) and len(truth.boxes):
        overlap = box_iou(boxes, truth.boxes)
        nearest = overlap.argmax(axis=1)
        positive = overlap[np.arange(len(boxes)), nearest] >= POSITIVE_IOU
        targets[positive] = truth.class_ids[nearest[positive]] + 1
        box_targets[positive] = boxes_to_crops(truth.boxes[nearest[positive]], windows[positive])
    return cut_crops(composite, windows, spec), targets, box_targets


def as_tensor(crops: list[np.ndarray], scale: float) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() * scale


def detect_with(
    net: torch.nn.Module, composites: list[np.ndarray], spec: ProposalSpec, classes: list[str], scale: float
) -> list[Detections]:
    """What the edge would detect with this network (scoring thresholds), one image at a time."""
    import torch

    device = next(net.parameters()).device
    net.eval()
    found = []
    with torch.no_grad():
        for composite in composites:
            windows, crops = candidate_crops(composite, spec)
            if len(windows):
                logits, relative = net(as_tensor(crops, scale).to(device))
                scores, boxes = torch.softmax(logits, dim=1).cpu().numpy(), relative.cpu().numpy()
            else:
                scores, boxes = np.zeros((0, len(classes) + 1), np.float32), np.zeros((0, 4), np.float32)
            found.append(
                decode_crops(
                    scores,
                    boxes,
                    windows,
                    (composite.shape[1], composite.shape[0]),
                    classes,
                    confidence_threshold=SCORING_CONFIDENCE,
                    iou_threshold=SCORING_IOU,
                    max_detections=300,
                )
            )
    return found


def _flipped(crops: torch.Tensor, boxes: torch.Tensor, *, horizontal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if horizontal:
        return crops.flip(3), torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    return crops.flip(2), torch.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], dim=1)


def _turned(crops: torch.Tensor, boxes: torch.Tensor, turns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops turned ``turns`` quarter turns counter-clockwise, and their boxes (crop units) with them: a quarter
    turn takes the point (x, y) to (y, 1 - x)."""
    import torch

    for _ in range(turns % 4):
        crops = torch.rot90(crops, 1, dims=(2, 3))
        boxes = torch.stack([boxes[:, 1], 1 - boxes[:, 2], boxes[:, 3], 1 - boxes[:, 0]], dim=1)
    return crops, boxes


def _relit(crops: torch.Tensor, strength: float, generator: torch.Generator, scale: float) -> torch.Tensor:
    """Each crop of a composite as if its board were lit by a random factor f in [1 - strength, 1 + strength]:
    image and template times f, and the signed difference (128 + (image - template) / 2, ``reference_composite``)
    f times as far from its middle, so the three channels still agree. Plants differ in lighting and in how bright
    their copper and substrate scan; a crop network that keys on the levels of one plant misreads another's."""
    import torch

    factors = 1 + (torch.rand(len(crops), 1, 1, generator=generator) * 2 - 1) * strength
    middle = 128 * scale
    relit = crops.clone()
    relit[:, :2] = crops[:, :2] * factors[:, None]
    relit[:, 2] = middle + (crops[:, 2] - middle) * factors
    return relit.clamp(0, 255 * scale)


def _learned_classes(targets: torch.Tensor, outputs: int, *, every_kind: bool) -> torch.Tensor:
    """Which of the network's outputs (background first) this run's loss may teach: background and every kind
    among the crops' targets, or every output with ``every_kind``. A kind the plant never labeled stays out of the
    softmax: its boards say nothing about it, and pushing its logit down on every crop would undo what the plants
    that do see it taught the shared model."""
    import torch

    if every_kind:
        return torch.ones(outputs, dtype=torch.bool)
    learned = torch.zeros(outputs, dtype=torch.bool)
    learned[0] = True
    learned[torch.unique(targets)] = True
    return learned


def start_crop_training(
    job: TrainingJob,
) -> tuple[ModelManifest, ProposalSpec, torch.nn.Module, dict[str, np.ndarray], np.random.Generator]:
    """What both template-crops trainers start from: torch's threads and seed set, the base model's manifest (a
    template-crops model reading template comparisons), its proposal settings, its network on the job's device,
    its weights before training and the job's random generator."""
    import torch

    from exporters.common import state_dict_arrays
    from exporters.rebuild import rebuild_module

    torch.set_num_threads(max(1, job.threads))
    torch.manual_seed(job.seed)
    manifest = read_model_manifest({MANIFEST_FILE: job.base_dir / MANIFEST_FILE})
    if manifest.input.template != TemplateInput.COMPOSITE:
        raise TrainingError(f"run {job.run_id}: {manifest.name} is a template-crops model without template input")
    net = rebuild_module(manifest, job.base_dir / WEIGHTS_FILE)
    base_state = state_dict_arrays(net)
    return (
        manifest,
        ProposalSpec.from_params(manifest.architecture.params),
        net.to(job.device),
        base_state,
        (np.random.default_rng(job.seed)),
    )


def train_crop_detector(
    job: TrainingJob, report: Callable[[str], None]
) -> tuple[TrainingResult, dict[str, np.ndarray]]:
    """Train as ``job`` says; returns the result and the delta (trained minus global) per state tensor."""
    import torch
    import torch.nn.functional as functional

    from exporters.common import state_dict_arrays
    from exporters.ultralytics_env import prepare_ultralytics

    if job.settings.train_scope != TrainScope.ALL:
        raise TrainingError(f"run {job.run_id}: train_scope {job.settings.train_scope.value!r} is for classifiers")
    clock = StageClock()
    prepare_ultralytics(job.work_dir / "ultralytics", threads=job.threads)  # offline, for its AP computation
    manifest, spec, net, base_state, rng = start_crop_training(job)
    classes = list(manifest.classes)
    scale = manifest.input.scale

    crops: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    box_targets: list[np.ndarray] = []
    images = 0
    for sample, composite in load_images(job.train, manifest.input):
        cut, image_targets, image_boxes = training_crops(composite, labeled_boxes(sample, classes), spec, rng)
        crops += cut
        targets.append(image_targets)
        box_targets.append(image_boxes)
        images += 1
    if not images:
        raise TrainingError(f"run {job.run_id}: none of the {len(job.train)} training images could be read")
    if not crops:
        raise TrainingError(
            f"run {job.run_id}: the {images} training images differ from their templates nowhere and have no "
            "labeled boxes: nothing to learn"
        )
    holdout = [
        (labeled_boxes(sample, classes), composite) for sample, composite in load_images(job.holdout, manifest.input)
    ]

    def evaluate() -> dict[str, float]:
        if not holdout:
            return {}
        found = detect_with(net, [composite for _, composite in holdout], spec, classes, scale)
        return detection_map(found, [truth for truth, _ in holdout], classes).as_metrics()

    clock.lap("prepare")
    before = evaluate()
    clock.lap("score")
    inputs = as_tensor(crops, scale)
    kinds_all = torch.from_numpy(np.concatenate(targets))
    boxes_all = torch.from_numpy(np.concatenate(box_targets))
    settings = job.settings
    batch = settings.batch_size
    steps_per_epoch = (len(inputs) + batch - 1) // batch
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.learning_rate, total_steps=settings.local_epochs * steps_per_epoch
    )
    learned = _learned_classes(kinds_all, len(classes) + 1, every_kind=not job.labeled_kinds_only).to(job.device)
    anchors = [p.detach().clone() for p in net.parameters()]
    generator = torch.Generator().manual_seed(job.seed)
    epochs_done = 0
    stopped_early = False
    for epoch in range(settings.local_epochs):
        net.train()
        order = torch.randperm(len(inputs), generator=generator)
        if len(order) % batch == 1 and len(order) > 1:
            order = order[:-1]  # a trailing batch of one would break BatchNorm
        total = 0.0
        for start in range(0, len(inputs), batch):
            index = order[start : start + batch]
            x, kinds, boxes = inputs[index], kinds_all[index], boxes_all[index]
            if job.augmentation.horizontal_flip and torch.rand(1, generator=generator).item() < 0.5:
                x, boxes = _flipped(x, boxes, horizontal=True)
            if job.augmentation.vertical_flip and torch.rand(1, generator=generator).item() < 0.5:
                x, boxes = _flipped(x, boxes, horizontal=False)
            if job.augmentation.rotate90:
                x, boxes = _turned(x, boxes, int(torch.randint(0, 4, (1,), generator=generator)))
            if job.augmentation.brightness:
                x = _relit(x, job.augmentation.brightness, generator, scale)
            logits, predicted = net(x.to(job.device))
            kinds, boxes = kinds.to(job.device), boxes.to(job.device)
            loss: torch.Tensor = functional.cross_entropy(logits.masked_fill(~learned, -torch.inf), kinds)
            defect = kinds > 0
            if defect.any():
                box_loss = functional.smooth_l1_loss(predicted[defect], boxes[defect], beta=0.05)
                loss = loss + BOX_LOSS_WEIGHT * box_loss
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
            proximal_step(net.parameters(), anchors, optimizer.param_groups[0]["lr"], settings.proximal_mu)
            schedule.step()
            total += float(loss.detach()) * len(index)
        epochs_done = epoch + 1
        report(progress_line(epochs_done, settings.local_epochs, loss=total / len(inputs)))
        if time.monotonic() - clock.started > job.deadline_s and epochs_done < settings.local_epochs:
            stopped_early = True
            break
    clock.lap("train")
    after = evaluate()
    clock.lap("score")
    trained = state_dict_arrays(net.cpu())
    result = clock.result(
        job.run_id,
        num_examples=images,
        epochs=epochs_done,
        stopped_early=stopped_early,
        before=before,
        after=after,
    )
    log.info(
        "crop detector trained",
        extra={"run_id": job.run_id, "images": images, "crops": len(inputs), "epochs": epochs_done},
    )
    return result, state_delta(trained, base_state)
