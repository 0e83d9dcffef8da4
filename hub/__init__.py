"""Hub: runs federated rounds, validates and aggregates edge updates, keeps the model registry and republishes
signed global models. Imports ``schemas`` and never ``edge``."""
