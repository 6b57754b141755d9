"""Backup repositories (file:// and s3://) behind one Repository interface (client.py)."""
