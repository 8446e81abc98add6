"""Progress as plain lines with an ETA: what a CI log, `make demo | tee`, a chat and a run's log file
show, where a live progress bar would print nothing until the end (or fight a prompt)."""

from __future__ import annotations

import time
from collections.abc import Callable


def clock_text(seconds: float) -> str:
    """"1:05:09", "4:07", "0:03"."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLines:
    """A ``(stage, done, total)`` progress callback that writes one line to every sink at a stage's
    start and end, at each ``1/steps`` of it, and at least every ``every_seconds`` in between:
    ``generate: 120/600 (20 %), 1:40 elapsed, eta 6:40``. A stage whose ``done`` goes back starts again
    (the next iteration of a run)."""

    def __init__(self, *sinks: Callable[[str], None], steps: int = 10, every_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sinks, self.steps, self.every_seconds, self.clock = sinks, max(1, steps), every_seconds, clock
        self._stages: dict[str, dict[str, float]] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        state = self._stages.get(stage)
        if state is None or done < state["done"]:
            state = self._stages[stage] = {"start": now, "done": done, "step": -1, "shown": -float("inf")}
        state["done"] = done
        step = self.steps * done // max(total, 1)
        if step == state["step"] and now - state["shown"] < self.every_seconds and done < total:
            return
        if step == state["step"] and done >= total:
            return  # the end was shown already
        state["step"], state["shown"] = step, now
        elapsed = now - state["start"]
        eta = clock_text(elapsed / done * (total - done)) if 0 < done < total else ("0:00" if done >= total else "?")
        line = (f"{stage}: {done}/{total} ({100 * done // max(total, 1)} %), {clock_text(elapsed)} elapsed, eta {eta}")
        for sink in self.sinks:
            sink(line)
