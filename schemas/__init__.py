"""The fedinspect contract: configs, messages, manifests, the MQTT topic tree, chunk frames and the codecs.

Both the edge agent and the hub import this package and nothing of each other. It imports no runtime (no MQTT
client, database, web or crypto library: those are ``runtime``) and no ML framework, so that a hub without ML
frameworks, or a non-Python client using the exported JSON Schemas, can speak the protocol; import-linter's
contracts in pyproject.toml enforce it.
"""

SCHEMA_VERSION = 1
"""Version of the wire contract; it is the ``schema_version`` of every envelope and the ``v1`` of the prefix."""
