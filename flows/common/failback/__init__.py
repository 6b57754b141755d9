"""Failback steps shared by the failback flow and the region-failover drill."""
