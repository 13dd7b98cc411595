"""The `cdp` command line: runs, the stream, stewardship, keys, the ops store and serving."""
