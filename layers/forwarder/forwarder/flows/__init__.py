"""The business of each Lambda: ingest, validate, deliver, refresh tokens. Handlers are thin wrappers."""
