"""Fixtures for the transfer tests: a real KV receiver on a free 127.0.0.1 port."""

from __future__ import annotations

import pytest
from transfer_helpers import SECRET

from transfer.receiver import KVReceiver
from transfer.staging import StagingStore


@pytest.fixture
def receiver(port):
    store = StagingStore(budget_bytes=1 << 30, ttl_s=60)
    server = KVReceiver("127.0.0.1", port, SECRET, store)
    server.start()
    yield server
    server.stop()
