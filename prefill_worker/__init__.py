"""Prefill worker: a vLLM engine that streams each request's KV to a decode worker."""
