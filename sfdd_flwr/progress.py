"""Progress output for long local work, and durations as people read them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# How often long local work reports by default (the `progress-seconds` setting's default).
DEFAULT_PROGRESS_SECONDS = 30.0


class ProgressTicker:
    """Calls `emit(text)` at most once every `interval_seconds` (for long local work)."""

    def __init__(self, emit: Callable[[str], None] | None, interval_seconds: float = DEFAULT_PROGRESS_SECONDS):
        self.emit = emit
        self.interval_seconds = interval_seconds
        self.started = time.monotonic()
        self.last = self.started

    def tick(self, describe: Callable[[], str]) -> None:
        if self.emit is None:
            return
        now = time.monotonic()
        if now - self.last >= self.interval_seconds:
            self.last = now
            self.emit(f"{describe()} ({now - self.started:.0f} s elapsed)")


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
