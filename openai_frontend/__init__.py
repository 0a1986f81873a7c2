"""An OpenAI-compatible HTTP API in front of Triton's streaming model (see README.md)."""
