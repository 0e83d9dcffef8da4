"""Fine-tune the good / defective classifier (PyTorch) from the global weights on the buffer's labeled samples.

The images are preprocessed exactly as the edge serves them (``edge.inference.images.to_tensor`` with the
bundle's input spec), after a random augmentation per epoch. Class balancing weights the loss by inverse class
frequency; the FedProx term mu/2 * ||w - w_global||^2 keeps the local model near the global one when the round
asks for it. Accuracy and loss on the local holdout are measured before and after.

A round with ``train_scope: head`` trains only the classifier head (``exporters.torch_classifier.head_prefixes``):
the backbone's parameters get no gradients and its BatchNorm layers stay in eval mode, so their running statistics
do not move either. Every backbone entry of the delta is then exactly zero: the update still names every tensor
(the hub validates complete updates) and the zeros compress to almost nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from edge.inference.errors import ImageError
from edge.inference.images import decode_image, reference_composite, to_tensor
from edge.training.batchnorm import calibration_batches, recalibrate_batchnorm
from edge.training.dataset import augment
from edge.training.jobs import StageClock, TrainingError, TrainingJob, TrainingResult, TrainingSample, progress_line
from schemas.bundle import MANIFEST_FILE, WEIGHTS_FILE, read_model_manifest
from schemas.manifests import TEMPLATE_CROPS_ARCHITECTURE, InputSpec, ModelManifest, TemplateInput
from schemas.messages import TrainScope
from schemas.tensors import state_delta

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
EVAL_BATCH = 32


def class_indices(manifest: ModelManifest, defect_class: str) -> tuple[int, int]:
    """(index of the good class, index of the defect class) among the classifier's outputs."""
    classes = manifest.classes
    if defect_class not in classes:
        raise TrainingError(f"{manifest.name}: classes {classes} do not include the defect class {defect_class!r}")
    defect = classes.index(defect_class)
    others = [i for i, name in enumerate(classes) if i != defect]
    if not others:
        raise TrainingError(f"{manifest.name}: a classifier needs a class besides {defect_class!r}")
    good = classes.index("good") if "good" in classes else others[0]
    return good, defect


def class_weights(targets: np.ndarray, classes: int) -> np.ndarray:
    """Inverse-frequency loss weights n / (k * count_c) over the k classes present; absent classes get 0."""
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(classes, np.float64)
    weights[present] = len(targets) / (present.sum() * counts[present])
    return weights.astype(np.float32)


def load_images(samples: list[TrainingSample], spec: InputSpec) -> list[tuple[TrainingSample, np.ndarray]]:
    """The samples' images as the model sees them: decoded, and compared with their golden templates when ``spec``
    says so. An unreadable image, or one without its template, is skipped and logged, not fatal."""
    loaded = []
    for sample in samples:
        try:
            image = decode_image(sample.image.read_bytes(), source=sample.sample_id)
            if spec.template == TemplateInput.COMPOSITE:
                if sample.template is None:
                    raise ImageError(f"{sample.sample_id}: no golden template was stored with this image")
                template = decode_image(sample.template.read_bytes(), source=f"{sample.sample_id} template")
                image = reference_composite(image, template, source=sample.sample_id)
            loaded.append((sample, image))
        except (OSError, ImageError) as exc:
            log.warning("training image skipped", extra={"sample_id": sample.sample_id, "error": str(exc)})
    return loaded


def freeze_backbone(net: torch.nn.Module, manifest: ModelManifest) -> list[str]:
    """Stop gradients to everything but the classifier head; returns the backbone's BatchNorm modules (by
    ``named_modules`` name), which must stay in eval mode for their statistics to stay as they are."""
    import torch

    from exporters.errors import ExportError
    from exporters.torch_classifier import head_prefixes

    try:
        heads = head_prefixes(manifest.architecture)
    except ExportError as exc:
        raise TrainingError(f"{manifest.name}: head-only training: {exc}") from None

    def in_head(name: str) -> bool:
        return any(f"{name}.".startswith(prefix) for prefix in heads)

    for name, parameter in net.named_parameters():
        if not in_head(name):
            parameter.requires_grad_(False)
    return [
        name
        for name, module in net.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not in_head(name)
    ]


def train_classifier(job: TrainingJob, report: Callable[[str], None]) -> tuple[TrainingResult, dict[str, np.ndarray]]:
    """Train as ``job`` says; returns the result and the delta (trained minus global) per state tensor. A
    template-crops model trains with its own trainer (``edge.training.crop_classifier``)."""
    import torch

    from exporters.common import state_dict_arrays
    from exporters.rebuild import rebuild_module

    manifest = read_model_manifest({MANIFEST_FILE: job.base_dir / MANIFEST_FILE})
    if manifest.architecture.name == TEMPLATE_CROPS_ARCHITECTURE:
        from edge.training.crop_classifier import train_crop_classifier

        return train_crop_classifier(job, report)
    clock = StageClock()
    torch.manual_seed(job.seed)
    rng = np.random.default_rng(job.seed)
    good, defect = class_indices(manifest, job.defect_class)
    net = rebuild_module(manifest, job.base_dir / WEIGHTS_FILE).to(job.device)
    base_state = state_dict_arrays(net)
    train = load_images(job.train, manifest.input)
    holdout = load_images(job.holdout, manifest.input)
    if not train:
        raise TrainingError(f"run {job.run_id}: none of the {len(job.train)} training images could be read")
    targets = np.array([defect if s.verdict == "defective" else good for s, _ in train], np.int64)
    weights = class_weights(targets, len(manifest.classes)) if job.class_balancing else None
    criterion = torch.nn.CrossEntropyLoss(weight=None if weights is None else torch.from_numpy(weights).to(job.device))

    def tensor(images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(to_tensor(images, manifest.input, np.dtype(np.float32))[0]).to(job.device)

    def evaluate() -> dict[str, float]:
        if not holdout:
            return {}
        net.eval()
        expected = np.array([defect if s.verdict == "defective" else good for s, _ in holdout], np.int64)
        losses, hits = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(holdout), EVAL_BATCH):
                chunk = holdout[start : start + EVAL_BATCH]
                logits = net(tensor([image for _, image in chunk]))
                truth = torch.from_numpy(expected[start : start + EVAL_BATCH]).to(job.device)
                losses += float(torch.nn.functional.cross_entropy(logits, truth, reduction="sum"))
                hits += int((logits.argmax(dim=1) == truth).sum())
        return {"accuracy": hits / len(holdout), "loss": losses / len(holdout), "holdout_size": float(len(holdout))}

    clock.lap("prepare")
    before = evaluate()
    clock.lap("score")
    settings = job.settings
    frozen_norms = freeze_backbone(net, manifest) if settings.train_scope == TrainScope.HEAD else []
    modules = dict(net.named_modules())
    trainable = [p for p in net.parameters() if p.requires_grad]
    mu = settings.proximal_mu
    anchors = [p.detach().clone() for p in trainable] if mu > 0 else []
    optimizer = torch.optim.Adam(trainable, lr=settings.learning_rate)
    batch_size = max(2, settings.batch_size)  # BatchNorm cannot train on a batch of one
    epochs_done, stopped_early = 0, False
    for epoch in range(settings.local_epochs):
        net.train()
        for name in frozen_norms:
            modules[name].eval()
        order = rng.permutation(len(train))
        if len(order) % batch_size == 1 and len(order) > 1:
            order = order[:-1]  # a trailing batch of one would break BatchNorm
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            images = [augment(train[i][1], [], job.augmentation, rng)[0] for i in indices]
            logits = net(tensor(images))
            loss = criterion(logits, torch.from_numpy(targets[indices]).to(job.device))
            if mu > 0:
                loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(trainable, anchors, strict=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(indices)
            seen += len(indices)
            if time.monotonic() - clock.started > job.deadline_s:
                stopped_early = True
                break
        if stopped_early:
            break
        epochs_done = epoch + 1
        report(progress_line(epochs_done, settings.local_epochs, loss=total / max(seen, 1)))
    recalibrate_batchnorm(
        net, calibration_batches([image for _, image in train], manifest.input, job.device), frozen=frozen_norms
    )
    clock.lap("train")
    after = evaluate()
    clock.lap("score")
    trained = state_dict_arrays(net.cpu())
    delta = state_delta(trained, base_state)
    result = clock.result(
        job.run_id,
        num_examples=len(train),
        epochs=epochs_done,
        stopped_early=stopped_early,
        before=before,
        after=after,
    )
    return result, delta
