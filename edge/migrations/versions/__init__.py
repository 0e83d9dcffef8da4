"""Edge buffer.db schema revisions, oldest first: ``0001`` is the buffer edges kept before Alembic (user_version 6)."""
