"""Terminal helpers for the CLI: progress bar on stderr, Ctrl-C as a polite stop."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """A one-line progress bar with rate, drawn only when stderr is a terminal."""

    def __init__(self, label: str, unit: str = "rows", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.unit = unit
        self.started = time.monotonic()
        self.last_draw = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last_draw < 0.1 and done < total:
            return
        self.last_draw = now
        rate = done / max(now - self.started, 1e-9)
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {done:,}/{total:,} {self.unit} {rate:,.0f} {self.unit}/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last_draw:
            self.stream.write("\n")
            self.stream.flush()


class StopFlag:
    """First Ctrl-C asks the work to stop after the current batch; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._loop.add_signal_handler(signal.SIGINT, self._first)
            self._loop.add_signal_handler(signal.SIGTERM, self._first)
        except (NotImplementedError, RuntimeError):  # not the main thread
            self._loop = None

    def _first(self) -> None:
        self.requested = True
        sys.stderr.write("\nstopping after the current batch (Ctrl-C again to abort)\n")
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGINT)
            self._loop.remove_signal_handler(signal.SIGTERM)

    def uninstall(self) -> None:
        if self._loop is not None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.remove_signal_handler(sig)


def echo(text: str, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(text + "\n")


ProgressFn = Callable[[int, int], None]
