"""The review queue and its samples: what waits for a person, the stored image with its boxes, and the label a
person gives (``GET /v1/review``, ``GET /v1/samples/{id}/image``, ``POST /v1/samples/{id}/label``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from edge.buffer.labels import UnknownSampleError
from edge.inspection import InspectionService
from edge.labels import label_problems
from edge.rendering import render_sample
from runtime.access import ApiToken
from runtime.http_errors import ApiError, error_responses
from schemas.base import IDENTIFIER_PATTERN
from schemas.messages import Verdict

SampleId = Annotated[str, Path(pattern=IDENTIFIER_PATTERN)]


class ReviewItemView(BaseModel):
    sample_id: str
    severity: str
    verdict: str
    score: float
    boxes: list[dict[str, Any]]
    source: str
    captured_at: datetime


class LabelBox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x1: float = Field(ge=0)
    y1: float = Field(ge=0)
    x2: float = Field(ge=0)
    y2: float = Field(ge=0)
    class_name: str = Field(min_length=1, max_length=200)


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    boxes: list[LabelBox] = Field(default_factory=list, max_length=1000)
    author: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Ignored: a label's author is the name of the token (or the web login) that sent it.",
    )


class LabelAccepted(BaseModel):
    label_id: int
    sample_id: str


IMMUTABLE = {"Cache-Control": "private, max-age=86400, immutable"}
"""For what a sample id always answers the same (its bare image, its template): browsers keep it a day."""


def router(service: InspectionService, viewer: list[Any], operator: list[Any]) -> APIRouter:
    routes = APIRouter()

    def known_sample(sample_id: str) -> Any:
        try:
            return service.buffer.samples.get(sample_id)
        except UnknownSampleError as exc:
            raise ApiError(404, "unknown_sample", str(exc)) from None

    @routes.get("/v1/review", response_model=list[ReviewItemView], dependencies=viewer)
    def review(
        severity: Literal["alert", "uncertain"] | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Any:
        """Pending review items, oldest first."""
        return [
            ReviewItemView(**vars(item)) for item in service.buffer.samples.review_items(limit=limit, severity=severity)
        ]

    @routes.get(
        "/v1/samples/{sample_id}/image",
        dependencies=viewer,
        responses={200: {"content": {"image/png": {}}}, **error_responses(404, 410)},
        response_class=Response,
    )
    def sample_image(sample_id: SampleId, boxes: bool = True) -> Response:
        """The stored image as PNG, with the predicted boxes drawn unless boxes=false."""
        view = known_sample(sample_id)
        image_file = service.buffer.images.path(view.sha256)
        if not image_file.is_file():
            raise ApiError(410, "image_evicted", f"the image of {sample_id} was evicted under the disk quota")
        # the bare image never changes for a sample id: the live view's reloads need not fetch it again
        return Response(
            render_sample(image_file.read_bytes(), view.boxes if boxes else []),
            media_type="image/png",
            headers=None if boxes else IMMUTABLE,
        )

    @routes.get(
        "/v1/samples/{sample_id}/template",
        dependencies=viewer,
        responses={200: {"content": {"image/png": {}}}, **error_responses(404, 410)},
        response_class=Response,
    )
    def sample_template(sample_id: SampleId) -> Response:
        """The golden template the image was compared with, as PNG (404 for a sample inspected without one)."""
        view = known_sample(sample_id)
        if view.template_sha256 is None:
            raise ApiError(404, "no_template", f"{sample_id} was inspected without a golden template")
        template_file = service.buffer.images.path(view.template_sha256)
        if not template_file.is_file():
            raise ApiError(410, "image_evicted", f"the template of {sample_id} was evicted under the disk quota")
        return Response(render_sample(template_file.read_bytes(), []), media_type="image/png", headers=IMMUTABLE)

    @routes.post(
        "/v1/samples/{sample_id}/label",
        response_model=LabelAccepted,
        responses=error_responses(404, 422),
    )
    def label(
        sample_id: SampleId,
        request: LabelRequest,
        # a default, not Annotated: the dependency is local to router(), where string annotations cannot see it
        caller: ApiToken = operator[0],
    ) -> Any:
        """Confirm or correct a result: the verdict and, for defects, the boxes (class names of the detector).
        The label's author is the caller's token name."""
        view = known_sample(sample_id)
        boxes = [b.model_dump() for b in request.boxes]
        problems = label_problems(
            request.verdict.value, boxes, width=view.width, height=view.height, classes=service.detector_classes
        )
        if problems:
            raise ApiError(422, "bad_label", "; ".join(problems))
        label_id = service.buffer.labels.add(
            sample_id, verdict=request.verdict.value, boxes=boxes, source="operator", author=caller.name
        )
        return LabelAccepted(label_id=label_id, sample_id=sample_id)

    return routes
