"""Gold profile: daily usage, facts, profiles, scores, consent columns and the outbox."""
