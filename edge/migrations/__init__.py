"""The edge buffer.db's Alembic migration chain (``edge.db`` runs it; one file per revision in ``versions/``)."""
