"""PostgreSQL: the protected servers. One client (client.py) opens every connection and decides which errors are transient."""
