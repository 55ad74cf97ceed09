"""Callers: API keys and their limits."""
