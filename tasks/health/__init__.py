"""End-to-end health of a target: its HTTP checks, SQL checks and validation queries."""
