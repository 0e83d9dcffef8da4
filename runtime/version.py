"""The installed fedinspect version, as both processes report it (status messages, /healthz, the CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedinspect")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
