"""FedProx at the edge: after each optimizer step, the local model is pulled back toward the round's global one, so
that plants whose data differ do not drift apart (Li et al., "Federated Optimization in Heterogeneous Networks").
Every trainer calls this one step."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch


def proximal_step(parameters: Iterable[torch.Tensor], anchors: list[torch.Tensor], lr: float, mu: float) -> None:
    """FedProx as a proximal step after an optimizer step: every parameter pulled toward the round's global one by
    lr x mu of their difference (nothing when mu is 0)."""
    if mu <= 0:
        return
    import torch

    with torch.no_grad():
        for parameter, anchor in zip(parameters, anchors, strict=True):
            parameter.sub_(lr * mu * (parameter - anchor))
