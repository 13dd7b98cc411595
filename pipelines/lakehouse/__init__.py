"""The storage layer every stage stands on: the table catalog, Delta readers (delta-rs) and
writers (Spark), the Spark session, Arrow types and stage locks."""
