"""What a person reads: tables, markdown, the RTO/RPO chart, HTML, Prefect artifacts."""
