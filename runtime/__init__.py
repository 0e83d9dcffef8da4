"""The shared runtime of the edge agent and the hub: what both processes run, apart from the contract they speak.

| module | what it is |
|---|---|
| `mqtt` | `MqttLink`: the paho client with prefix, LWT, birth, typed handlers per topic, bounded payloads |
| `exchange` | chunked artifact exchange over the link: `TransferOutbox` (resumable sender), `TransferReceiver` |
| `assembler` | `TransferPlan` (a file cut into chunk frames), `TransferAssembler` (frames back into a file) |
| `signing` | Ed25519 keys, signing and verifying manifests and commands, key rings |
| `db` | SQLite engines in WAL mode |
| `migrations` | `MigrationChain`: the Alembic runner of the hub database and the edge buffer.db |
| `access` | API tokens and roles; `http_access`: the HTTP middleware that checks them and trusted hosts |
| `web_sessions` | web logins: a token becomes a session cookie with its CSRF token, re-checked on every request |
| `web/` | what both processes' pages share: login and logout, layout and style, HTTPS beyond loopback |
| `systemd` | sd_notify: READY, watchdog pings, STOPPING |
| `logs` | structured JSON logging |
| `processes` | workers: their environment, dying with their parent, their `error:` line |
| `http_errors` | the one HTTP error body `{detail, reason}` of both APIs |
| `version` | the installed fedinspect version |

Layers (checked by import-linter, `make lint` and `tests/test_layers.py`): `schemas` (the contract) imports none of
this; `runtime` imports the contract only; `edge` and `hub` import both, never each other, never the CLI package.
"""
