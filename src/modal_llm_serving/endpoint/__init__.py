"""Talking to an OpenAI-compatible endpoint: the wire format, SSE, a client, the smoke test."""
