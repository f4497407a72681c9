"""Authentication and authorization: API keys (keys.py), the in-memory key ring and rate limits (keyring.py)."""
