"""A one-line progress bar on a terminal stream (stderr), shared by `nbxent score` and
`nbxent bench`."""

from __future__ import annotations

import math
import sys
import time


class Bar:
    """Draws `[####....]  42.0% <counts or note>  ETA 12s` with carriage returns.

    Called as `bar(done, total, note="")`; redraws at most every 0.1 s (always at the end),
    and not before `delay` seconds have passed, so short runs print nothing. `unit` names
    what is counted ("rows": counts and a rate are shown; None: the note instead).
    `clear()` erases a drawn line, for callers that print other lines in between.
    """

    def __init__(self, total: int, start: int = 0, stream=None, unit: str | None = "rows",
                 delay: float = 0.0):
        self.total = total
        self.stream = stream or sys.stderr
        self.unit = unit
        self.delay = delay
        self.t0 = time.perf_counter()
        self.first = start
        self.last_draw = 0.0
        self.width = 0          # characters of the line drawn last (0: nothing shown)

    def __call__(self, done: float, total: float | None = None, note: str = ""):
        total = self.total if total is None else total
        now = time.perf_counter()
        finished = done >= total
        if now - self.t0 < self.delay or (not finished and now - self.last_draw < 0.1):
            return
        self.last_draw = now
        frac = done / total if total else 1.0
        fill = int(frac * 30)
        rate = (done - self.first) / (now - self.t0) if now > self.t0 else 0.0
        eta = (total - done) / rate if rate > 0 else math.inf
        eta_text = f"{eta:4.0f}s" if math.isfinite(eta) else "   ?"
        if self.unit is not None:
            what = f"{done:,}/{total:,} {self.unit}  {rate:,.0f} {self.unit}/s"
        else:
            what = note
        line = f"[{'#' * fill}{'.' * (30 - fill)}] {100 * frac:5.1f}% {what}  ETA {eta_text}"
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        if finished:
            self.stream.write("\n")
            self.width = 0
        self.stream.flush()

    def clear(self):
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
