"""Slack: incident threads and messages through one WebClient (client.py)."""
