"""Shared fixtures: free ports on 127.0.0.1 and a factory for real vLLM worker processes."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()
