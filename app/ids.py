"""Run ids that sort by when they were made (the layout of UUID version 7, RFC 9562: 48
bits of Unix milliseconds, then random bits). Rows written together then land together
in the primary key's index, at its right edge, instead of on random pages of it: at
millions of runs the index no longer fits in the buffer cache."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np


def time_ordered_ids(n: int, at_ms: int | None = None) -> list[uuid.UUID]:
    ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, :6] = np.frombuffer(ms.to_bytes(6, "big"), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70  # version 7
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC's variant
    data = raw.tobytes()
    return [uuid.UUID(bytes=data[i:i + 16]) for i in range(0, 16 * n, 16)]
