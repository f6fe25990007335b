"""Time-ordered ids for ledger entries and holds."""

from __future__ import annotations

import secrets
import threading
import time
import uuid

_id_lock = threading.Lock()
_id_state = (0, 0)  # (milliseconds, counter) of the last id


def ordered_uuid() -> uuid.UUID:
    """A UUIDv7: wall-clock milliseconds, then a counter; increasing within a process.

    Entries and holds written in one millisecond still get ids in the order they were written
    (in this process). The ledger's own order is each entry's `seq`, not its id or timestamp.
    """
    global _id_state
    now_ms = time.time_ns() // 1_000_000
    with _id_lock:
        last_ms, last_counter = _id_state
        if now_ms > last_ms:
            state = (now_ms, secrets.randbits(72))  # headroom below 2**74 for increments
        elif last_counter + 1 < 1 << 74:
            state = (last_ms, last_counter + 1)
        else:
            state = (last_ms + 1, 0)
        _id_state = state
    ms, counter = state
    value = (ms << 80) | (0x7 << 76) | ((counter >> 62) << 64) | (0b10 << 62) | (counter & ((1 << 62) - 1))
    return uuid.UUID(int=value)
