"""The hub's HTTP API (127.0.0.1 by default): one router per resource, wired by ``create_app``.

| module | routes |
|---|---|
| `app` | `create_app`: token guard, host check, body limit, the one error body (`runtime.http_errors`), the routers |
| `edges` | `GET /v1/edges`, `POST /v1/edges/{id}/commands`, `GET /v1/commands/{id}`; `COMMAND_ROLES` |
| `rounds` | `GET /v1/rounds`, `GET /v1/rounds/{id}`, `GET /v1/rejections` |
| `models` | `GET /v1/models`, `POST /v1/models/{name}/rollback` |
| `health` | `/healthz` and Prometheus `/metrics` |
| `views` | the response models |

Nothing here changes state except POSTing a command to an edge or a rollback of a model line. Every refusal is
``{"detail": ..., "reason": ...}``; the OpenAPI spec is at ``/openapi.json``.
"""

from hub.api.app import create_app
from hub.api.edges import COMMAND_ROLES

__all__ = ["COMMAND_ROLES", "create_app"]
