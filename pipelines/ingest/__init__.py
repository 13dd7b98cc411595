"""Ingestion: landing files to bronze (raw lines, exactly once) and typed silver with quarantine
and drift; reference loads."""
