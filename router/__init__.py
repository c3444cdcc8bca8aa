"""Routing: prefix block hashing (equal to vLLM's), worker choice, remote-vs-local prefill.

Pure computation over in-memory state; no network I/O on the request path.
"""
