"""Logical backups: pg_dump with manifests, restores, amcheck, GFS retention, injected damage."""
