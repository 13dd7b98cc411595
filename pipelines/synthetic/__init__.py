"""The synthetic operator: a generated subscriber base and its events, hard in the ways real
operator data is."""
