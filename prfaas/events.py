"""Append-only JSON-lines event log for the KV path (one file per worker, optional).

Each line is ``{"t": <unix seconds>, "event": <name>, ...fields}``. Operators read it to follow
a transfer across processes; tests read it to prove ordering (e.g. layer 0 arrived on the
decode worker before the prefill forward pass finished). Disabled when no path is set.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class EventLog:
    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def emit(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"t": time.time(), "event": event, **fields}, separators=(",", ":"))
        with self._lock, self.path.open("a") as out:
            out.write(line + "\n")


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
