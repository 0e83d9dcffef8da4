"""Golden templates: the defect-free image of each board type, read from a folder by template id.

A model whose input spec says ``template: composite`` compares every image with its template
(``reference_composite``). The store reads ``<templates_dir>/<template id>.<ext>`` once and keeps it decoded until
the file changes (a replaced file is read again at the next image), so the camera side only names the board type.
The encoded bytes travel with each inspected sample into the buffer: a later training run compares with the
template the inspection used, even after the file in the folder was replaced.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.inference.errors import ImageError
from edge.inference.images import decode_image
from schemas.base import IDENTIFIER_PATTERN
from schemas.errors import FedinspectError

log = logging.getLogger(__name__)
TEMPLATE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


class TemplateError(FedinspectError):
    """An image cannot be compared with a template; ``reason`` is the intake counter label."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Template:
    template_id: str | None
    """Its id in the templates folder; None for a template that came with an image (a DeepPCB pair's)."""
    data: bytes
    """The file's bytes as read (stored with each sample that used it)."""
    image: np.ndarray
    """Decoded, grayscale or BGR uint8."""


@dataclass(frozen=True)
class _Cached:
    path: Path
    mtime_ns: int
    size: int
    template: Template


class TemplateStore:
    """Templates by id from ``directory``; ``default`` is used for images that name none."""

    def __init__(self, directory: Path | None, *, default: str | None = None, max_cached: int = 64) -> None:
        self.directory = directory
        self.default = default
        self.max_cached = max_cached
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, template_id: str | None) -> Template | None:
        """The template ``template_id`` names, else the default one, else None; ``TemplateError`` if unusable."""
        wanted = template_id if template_id is not None else self.default
        return None if wanted is None else self.get(wanted)

    def get(self, template_id: str) -> Template:
        if not _IDENTIFIER.match(template_id):
            raise TemplateError(
                "unknown_template",
                f"template id {template_id!r} is not valid (1-64 letters, digits, '_', '-', '.'; no path)",
            )
        if self.directory is None:
            raise TemplateError(
                "unknown_template",
                f"template {template_id!r} was named, but inspection.templates_dir is not configured",
            )
        path = self._path(template_id)
        try:
            stat = path.stat()
        except OSError as exc:
            raise TemplateError("unknown_template", f"template {template_id!r}: cannot read {path}: {exc}") from None
        with self._lock:
            cached = self._cache.get(template_id)
            version = (path, stat.st_mtime_ns, stat.st_size)
            if cached is not None and (cached.path, cached.mtime_ns, cached.size) == version:
                self._cache.move_to_end(template_id)
                return cached.template
        template = self._read(template_id, path)
        with self._lock:
            self._cache[template_id] = _Cached(path, stat.st_mtime_ns, stat.st_size, template)
            self._cache.move_to_end(template_id)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        log.info("template loaded", extra={"template_id": template_id, "file": str(path)})
        return template

    def _path(self, template_id: str) -> Path:
        assert self.directory is not None
        found = [
            self.directory / f"{template_id}{extension}"
            for extension in TEMPLATE_EXTENSIONS
            if (self.directory / f"{template_id}{extension}").is_file()
        ]
        if not found:
            raise TemplateError(
                "unknown_template",
                f"no template {template_id!r} in {self.directory} (expected {template_id}.png, .jpg, .bmp or .tif)",
            )
        if len(found) > 1:
            raise TemplateError(
                "unknown_template",
                f"template {template_id!r} is ambiguous: {', '.join(p.name for p in found)} in {self.directory}",
            )
        return found[0]

    @staticmethod
    def _read(template_id: str, path: Path) -> Template:
        try:
            data = path.read_bytes()
            image = decode_image(data, source=f"template {template_id!r} ({path})")
        except OSError as exc:
            raise TemplateError("unknown_template", f"template {template_id!r}: cannot read {path}: {exc}") from None
        except ImageError as exc:
            raise TemplateError("bad_template", str(exc)) from None
        return Template(template_id, data, image)
