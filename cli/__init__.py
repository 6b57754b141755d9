"""The ``dr`` command line: parses, calls flows, deployments and the lab, prints (top layer)."""
