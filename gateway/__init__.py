"""OpenAI-compatible front door: validation, tokenization for routing, orchestration of
prefill and decode requests, streaming back, errors."""
