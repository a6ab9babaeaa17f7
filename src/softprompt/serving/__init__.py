"""Serving many soft prompts and prefixes on one frozen model: the adapters, the
continuous-batching engine and the OpenAI-compatible HTTP API."""
