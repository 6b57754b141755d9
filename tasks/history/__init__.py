"""The drill and incident history, in PostgreSQL (reached through tasks.postgres.client)."""
