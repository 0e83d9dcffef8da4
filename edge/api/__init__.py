"""The edge's HTTP API (127.0.0.1 by default): one router per resource, wired by ``create_app``.

| module | routes |
|---|---|
| `app` | `create_app`: token guard, host check, body limits, the one error body (`runtime.http_errors`), the routers |
| `inspect` | `POST /v1/inspect`: an image as the raw body or a multipart file, answered with the inspection result |
| `review` | `GET /v1/review`, `GET /v1/samples/{id}/image`, `POST /v1/samples/{id}/label` |
| `labels` | `POST /v1/labels/import`: bulk import of YOLO / DeepPCB labeled images (the work: `edge.label_import`) |
| `training` | `GET /v1/training/runs` |
| `health` | `/healthz`, `/readyz` and Prometheus `/metrics` |

Every refusal is ``{"detail": ..., "reason": ...}`` with a 4xx or 5xx status; the OpenAPI spec is at
``/openapi.json``.
"""

from edge.api.app import Readiness, create_app

__all__ = ["Readiness", "create_app"]
