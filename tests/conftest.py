"""Shared fixtures: a free TCP port on 127.0.0.1 (workers themselves start in tests/stack.py)."""

from __future__ import annotations

import pytest
from stack import free_port


@pytest.fixture
def port() -> int:
    return free_port()
