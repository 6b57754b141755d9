"""Write-once evidence bundles of breach responses: collect, checksum, store, verify."""
