"""Edge agent: serves the ONNX classifier and detector next to the camera, buffers results and labels in SQLite,
fine-tunes locally and exchanges signed model updates with the hub. Imports ``schemas`` and ``runtime``, never
``hub`` nor the CLI package.

| module | what it is |
|---|---|
| `service` | `EdgeService`: wires everything below, the systemd life cycle, the retained status |
| `inspection` | `InspectionService`: intake limits, classify-then-detect; `store_inspection`: review, event, store |
| `inference/` | ONNX Runtime sessions, the classifier and detector inferencers, templates, the pipeline, the watchdog |
| `sources` | a watched folder and an MQTT image topic, besides HTTP |
| `buffer/` | `EdgeBuffer`: image files and quota, samples and review queue, labels and holdout, the event outbox |
| `db`, `tables`, `migrations/` | buffer.db's one owner: its tables and their Alembic chain |
| `events` | what an inspection event says; `EventPublisher` drains the outbox to the broker |
| `labels`, `label_import` | YOLO / DeepPCB label files; bulk import of labeled images |
| `api/` | the HTTP API, a router per resource; `rendering` draws boxes on review images |
| `ui/` | the operator's web pages under /ui: the review queue and the box editor (templates, static script) |
| `training/` | the scheduler, the trainer child process, the trainers, local BatchNorm statistics |
| `updates` | `UpdateUploader`: a trained delta, encoded and signed, into the transfer outbox |
| `models` | `ModelUpdater`: follows the hub's announcements, fetches, verifies and installs model bundles |
| `model_records` | installed versions, the newest-seen mark, the served model (`serving.json`) |
| `adaptation` | which copy of a new global classifier to consider (published, or with local BatchNorm statistics) |
| `swap` | `ModelSwapper`: scores a new model on the local holdout, swaps it in unless it regresses; rollback |
| `commands` | `CommandExecutor`: hub commands, each run at most once, acknowledged |

The data path through these modules is in docs/architecture.md ("The data path").
"""
