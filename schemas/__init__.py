"""The fedinspect contract: configs, messages, manifests, the MQTT topic tree and the MQTT link.

Both the edge agent and the hub import this package and nothing of each other. It must stay importable without
torch, onnxruntime, ultralytics or tensorflow, so that a hub without ML frameworks (or a non-Python client using
the exported JSON Schemas) can speak the protocol.
"""

SCHEMA_VERSION = 1
"""Version of the wire contract; it is the ``schema_version`` of every envelope and the ``v1`` of the prefix."""
