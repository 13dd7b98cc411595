"""Operations: the ops store (SQLAlchemy, Alembic migrations), API keys, the audit trail and
contract status with alerts."""
