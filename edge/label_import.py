"""Bulk import of labeled images (YOLO or DeepPCB label files) into the buffer, each with its golden template.

The HTTP route (``edge.api.labels``) parses the form; everything decided about a file is here: its size against the
intake's cap, decoding, its label file (``edge.labels``), its template (a DeepPCB pair's own template file, else the
named or default one, which must match the image's size), and the buffer's room. Every file is imported or refused
on its own, and the report says which and why.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from pydantic import BaseModel

from edge.buffer.images import BufferFullError
from edge.inference.templates import Template, TemplateError
from edge.inspection import InspectionService
from edge.labels import (
    LabelFileError,
    LabelFormat,
    is_deeppcb_template,
    label_parser,
    label_stem,
    pair_stem,
)


class ImportRefusal(BaseModel):
    file: str
    reason: str


class ImportReport(BaseModel):
    imported: int
    sample_ids: list[str]
    refused: list[ImportRefusal]


class ImportFile:
    """One uploaded file of an import, read only when it is imported (the form keeps it spooled till then)."""

    def __init__(self, name: str, file: BinaryIO, limit: int) -> None:
        self.name = name
        self._file = file
        self._limit = limit

    def read(self) -> bytes:
        """The file's bytes, at most the limit + 1 (so an oversized file is told apart without reading it all)."""
        self._file.seek(0)
        return self._file.read(self._limit + 1)


def _pair_templates(images: list[ImportFile], fmt: LabelFormat) -> dict[str, ImportFile]:
    """DeepPCB uploads: each board's template file by board (its test image is compared with it)."""
    if fmt != LabelFormat.DEEPPCB:
        return {}
    return {pair_stem(item.name): item for item in images if is_deeppcb_template(item.name)}


def _import_template(
    service: InspectionService, name: str, image: Any, pair_template: ImportFile | None, template_id: str | None
) -> Template | None:
    """The golden template an imported image is stored with: its DeepPCB pair's template, else the named (or
    default) one; ``TemplateError`` if it cannot be used, or is missing where the served models need one."""
    from edge.inference.errors import ImageError
    from edge.inference.images import check_template_size

    template: Template | None
    try:
        if pair_template is not None:
            data = pair_template.read()
            template = Template(None, data, service.decode_for_import(data, name=f"{name}'s pair template"))
        else:
            template = service.templates.resolve(template_id)
        if template is None:
            if service.pipeline.needs_template:
                raise TemplateError(
                    "no_template",
                    "the served models compare with golden templates; name one (form field 'template') or upload "
                    "DeepPCB pairs",
                )
            return None
        check_template_size(image, template.image, source=name)
    except ImageError as exc:
        raise TemplateError("template_mismatch", str(exc)) from None
    return template


def import_labeled_files(
    service: InspectionService,
    images: list[ImportFile],
    label_texts: dict[str, str],
    fmt: LabelFormat,
    classes: list[str],
    author: str,
    template_id: str | None = None,
) -> ImportReport:
    """Import ``images`` with their label texts (by label stem) in ``fmt``, one file in memory at a time: each is
    stored as a labeled sample with its golden template, or refused with the reason; the report lists both."""
    from edge.inference.errors import ImageError

    parse = label_parser(fmt)
    sample_ids: list[str] = []
    refused: list[ImportRefusal] = []
    pair_templates = _pair_templates(images, fmt)
    for item in images:  # one file in memory at a time
        name, data = item.name, item.read()
        if len(data) > service.intake.max_image_bytes:
            refused.append(
                ImportRefusal(file=name, reason=f"over intake.max_image_bytes ({service.intake.max_image_bytes})")
            )
            continue
        try:
            decoded = service.decode_for_import(data, name=name)
        except ImageError as exc:
            refused.append(ImportRefusal(file=name, reason=str(exc)))
            continue
        height, width = decoded.shape[:2]
        stem = label_stem(name, fmt)
        text = label_texts.get(stem)
        if text is None and not (fmt == LabelFormat.DEEPPCB and is_deeppcb_template(name)):
            refused.append(ImportRefusal(file=name, reason=f"no label file {stem}.txt"))
            continue
        if fmt == LabelFormat.DEEPPCB and is_deeppcb_template(name):
            text = ""  # a template is the defect-free image of its pair
        try:
            label = parse(text or "", name=f"{stem}.txt", width=width, height=height, classes=classes)
            template = _import_template(service, name, decoded, pair_templates.get(pair_stem(name)), template_id)
        except (LabelFileError, TemplateError) as exc:
            refused.append(ImportRefusal(file=name, reason=str(exc)))
            continue
        try:
            sample_id = service.buffer.samples.import_labeled(
                data,
                width=width,
                height=height,
                verdict=label.verdict,
                boxes=label.boxes,
                author=author,
                split_key=f"import:{pair_stem(name)}",
                template=template,
            )
        except BufferFullError as exc:
            refused.append(ImportRefusal(file=name, reason=f"not stored: {exc}"))
            continue
        sample_ids.append(sample_id)
    return ImportReport(imported=len(sample_ids), sample_ids=sample_ids, refused=refused)
