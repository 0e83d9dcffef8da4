"""``POST /v1/labels/import``: the multipart form of a bulk label import, read and checked here; the import
itself is ``edge.label_import``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from edge.inspection import InspectionService
from edge.label_import import ImportFile, ImportReport, import_labeled_files
from edge.labels import LabelFormat
from runtime.http_access import BodyTooLargeError
from runtime.http_errors import ApiError, error_responses

MAX_IMPORT_FILES = 2000
MAX_LABEL_FILE_BYTES = 1024 * 1024
_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
IMPORT_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "format": {"type": "string", "enum": ["yolo", "deeppcb"]},
                        "author": {"type": "string"},
                        "template": {"type": "string", "description": "golden template id of the images"},
                        "images": _FILES,
                        "labels": _FILES,
                    },
                    "required": ["format", "author", "images"],
                }
            }
        },
    }
}
"""The import's form in the OpenAPI spec (the route reads the form itself, so FastAPI cannot describe it)."""


def router(service: InspectionService, operator: list[Any]) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/v1/labels/import",
        dependencies=operator,
        response_model=ImportReport,
        responses=error_responses(400, 413, 422),
        openapi_extra=IMPORT_FORM,
    )
    async def import_labels(request: Request) -> Any:
        """Bulk-import labeled images: YOLO txt (class cx cy w h) or DeepPCB txt (x1 y1 x2 y2 type) files,
        matched to images by name. Each file is imported or refused on its own; the report says which and why.
        Each image is stored with its golden template: a DeepPCB pair's own template file, else the template the
        'template' field names (default: inspection.default_template).
        """
        classes = service.detector_classes
        if classes is None:
            raise ApiError(422, "no_detector", "label import needs the detector's class names; no detector is loaded")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
            raise ApiError(400, "bad_form", "send a multipart form with format, author, images and labels")
        try:
            form = await request.form(max_files=MAX_IMPORT_FILES, max_fields=8)
        except BodyTooLargeError:
            raise
        except Exception:  # malformed multipart bodies raise parser-specific errors
            raise ApiError(400, "bad_form", f"malformed multipart body (at most {MAX_IMPORT_FILES} files)") from None
        fmt_value, author = form.get("format"), form.get("author")
        if fmt_value not in ("yolo", "deeppcb") or not isinstance(author, str) or not author.strip():
            raise ApiError(400, "bad_form", "format must be 'yolo' or 'deeppcb' and author must be given")
        template_field = form.get("template")
        if template_field is not None and not isinstance(template_field, str):
            raise ApiError(400, "bad_form", "template must be a template id, not a file")
        label_texts: dict[str, str] = {}
        for item in form.getlist("labels"):
            if isinstance(item, str):
                continue
            raw = await item.read(MAX_LABEL_FILE_BYTES + 1)
            name = item.filename or "labels.txt"
            label_texts[name.rsplit(".", 1)[0]] = raw.decode("utf-8", errors="replace")
        images = [
            ImportFile(item.filename or "image", item.file, service.intake.max_image_bytes)
            for item in form.getlist("images")
            if not isinstance(item, str)
        ]
        return await run_in_threadpool(
            import_labeled_files,
            service,
            images,
            label_texts,
            LabelFormat(str(fmt_value)),
            classes,
            author.strip()[:128],
            template_field or None,
        )

    return routes
