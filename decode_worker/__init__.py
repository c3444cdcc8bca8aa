"""Decode worker: a vLLM engine that installs KV received from prefill and generates."""
