"""fedinspect: federated visual defect inspection. This package holds the ``fedinspect`` CLI, the demo and the
benchmarks; the version is ``runtime.version``'s."""

from runtime.version import __version__

__all__ = ["__version__"]
