"""Kubernetes: deployments, secrets, config maps, NetworkPolicies; one ApiClient (client.py)."""
