"""The hub database's Alembic migration chain (``hub.db`` runs it; one file per revision in ``versions/``)."""
