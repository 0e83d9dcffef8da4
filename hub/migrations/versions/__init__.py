"""Hub schema revisions, oldest first: ``0001`` is the schema hubs created before migrations existed."""
