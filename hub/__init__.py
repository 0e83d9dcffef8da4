"""Hub: runs federated rounds, validates and aggregates edge updates, keeps the model registry and publishes
signed global models. Imports ``schemas`` and ``runtime``, never ``edge`` nor the CLI package.

| module | what it is |
|---|---|
| `service` | `HubService`: wires everything below, the systemd life cycle, the retained status |
| `db`, `tables`, `migrations/` | the hub database's one owner (SQLite or PostgreSQL), its tables, their Alembic chain |
| `updates` | `UpdateInbox`: chunked update artifacts in, accepted only when hash, signature and contract check out |
| `validation` | the checks every update passes before aggregation, and the norm policy |
| `update_store` | verified updates of open rounds on disk, streamed one at a time into aggregation |
| `rounds` | `RoundManager`: opens rounds, collects updates, aggregates at k or the deadline, registers the version |
| `strategies/` | FedAvg and the other aggregation strategies, one file each |
| `registry` | `ModelRegistry`: model versions with lineage, participants and metrics; content-addressed weights |
| `model_import` | version 0 of a model line from an exported bundle |
| `publication` | `PublicationQueue`: export, sign and broadcast each new version off the round lock |
| `models` | `ModelPublisher`: sign, announce (retained), broadcast chunks, answer edges' fetches |
| `commands` | `CommandSender`: signed commands to edges and their acknowledgements |
| `edges` | what the hub knows of each edge from its retained status |
| `api/` | the HTTP API, a router per resource |
| `ui/` | the plant engineer's web pages under /ui: fleet, rounds with refusals, model lines with rollback |

The data path through these modules is in docs/architecture.md ("The data path").
"""
