"""Link emulation for experiments: a token-bucket rate limit and an added one-way latency.

One ``LinkShaper`` is shared by all connections of a sender, so together they cannot exceed
``gbps``; a burst of ``burst_bytes`` may go at once. Frames are also held until
``latency_s`` after they were queued, which delays each frame without serializing them (as a
real link's propagation delay would). ``gbps = 0`` means unlimited.
"""

from __future__ import annotations

import threading
import time


class LinkShaper:
    def __init__(self, gbps: float, latency_ms: float = 0.0, burst_bytes: int = 1 << 20) -> None:
        self.bytes_per_s = gbps * 1e9 / 8
        self.latency_s = latency_ms / 1000
        self.burst_bytes = burst_bytes
        self._tokens = float(burst_bytes)
        self._updated = time.monotonic()
        self._lock = threading.Lock()

    @property
    def limited(self) -> bool:
        return self.bytes_per_s > 0

    def hold_until_due(self, queued_at: float) -> None:
        """Sleep until the frame queued at ``queued_at`` has crossed the emulated link."""
        delay = queued_at + self.latency_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def consume(self, nbytes: int) -> None:
        """Block until ``nbytes`` may be sent at the configured rate."""
        if not self.limited:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst_bytes,
                               self._tokens + (now - self._updated) * self.bytes_per_s)
            self._updated = now
            self._tokens -= nbytes
            wait = -self._tokens / self.bytes_per_s if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
