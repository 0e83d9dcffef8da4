"""Export errors: each names the model file and what to change."""

from __future__ import annotations

from schemas.errors import FedinspectError


class ExportError(FedinspectError):
    """The model could not be exported (bad input file, unsupported architecture, converter failure)."""


class ParityError(ExportError):
    """ONNX Runtime's outputs differ from the source framework's beyond the tolerance."""

    def __init__(self, max_abs_diff: float, atol: float, rtol: float) -> None:
        self.max_abs_diff = max_abs_diff
        super().__init__(
            f"parity check failed: ONNX Runtime differs from the source framework by up to {max_abs_diff:.3g} "
            f"(allowed: {atol:g} + {rtol:g} * |source|); the export was not written"
        )
