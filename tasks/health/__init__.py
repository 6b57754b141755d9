"""End-to-end health checks: HTTP and SQL."""
