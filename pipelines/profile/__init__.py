"""Gold profiles: daily usage, facts, profiles, scores, consent columns and the outbox; consent
enforcement per channel."""
