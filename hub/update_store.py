"""Verified updates of open rounds, kept on disk so that a restarted hub resumes a round with what it had, and
so that aggregation streams them one at a time (memory O(model) whatever the number of edges).

One file per (round, edge): the decoded delta as an uncompressed safetensors file, with the edge id and
num_examples in its metadata. Files are written to a temporary name and renamed, so a crash never leaves half a
file that looks complete.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from hub.strategies.base import ClientUpdate
from schemas.tensors import contiguous


class UpdateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _round_dir(self, round_id: str) -> Path:
        return self.directory / round_id

    def put(
        self,
        round_id: str,
        edge_id: str,
        num_examples: int,
        delta: Mapping[str, np.ndarray],
        weight: float | None = None,
    ) -> Path:
        """Store one edge's delta for a round (replacing an earlier one from the same edge)."""
        directory = self._round_dir(round_id)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{edge_id}.safetensors"
        tmp = path.with_suffix(".tmp")
        safetensors.numpy.save_file(
            {k: contiguous(v) for k, v in delta.items()},
            str(tmp),
            metadata={"edge_id": edge_id, "num_examples": str(num_examples)}
            | ({} if weight is None else {"weight": repr(weight)}),
        )
        tmp.replace(path)
        return path

    def edges(self, round_id: str) -> list[str]:
        directory = self._round_dir(round_id)
        return sorted(p.stem for p in directory.glob("*.safetensors")) if directory.is_dir() else []

    def iter_updates(self, round_id: str) -> Iterator[ClientUpdate]:
        """The round's updates in edge order, each loaded only when it is reached."""
        for edge_id in self.edges(round_id):
            yield self.load(round_id, edge_id)

    def load(self, round_id: str, edge_id: str) -> ClientUpdate:
        path = self._round_dir(round_id) / f"{edge_id}.safetensors"
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            delta = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        weight = metadata.get("weight")
        return ClientUpdate(
            metadata.get("edge_id", edge_id),
            int(metadata["num_examples"]),
            delta,
            None if weight is None else float(weight),
        )

    def drop_round(self, round_id: str) -> None:
        directory = self._round_dir(round_id)
        if directory.is_dir():
            for path in directory.iterdir():
                path.unlink()
            directory.rmdir()
