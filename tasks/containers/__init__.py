"""Containers through the Docker Engine API (Docker, or Podman's service); one client (client.py)."""
