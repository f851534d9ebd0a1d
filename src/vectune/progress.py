"""Progress of long work that happens in Ray workers, shown on the driver.

Encoding a corpus and training run in encoder actors and Ray Train workers, not in the
process the user watches. Those workers tick a small counter actor; the driver polls it
and draws a progress bar on stderr when stderr is a terminal, or logs a line every
`LOG_EVERY` seconds when it is not (a log file, `ray job logs`, `kubectl logs`).

    with track("encode corpus", total=5183, unit="docs") as counter:
        ds = embed_dataset(..., progress=counter)   # the encoder actors call counter.add
        consume(ds)

Ticks are fire-and-forget (`add.remote` without waiting), so a worker never blocks on the
display; a counter that is gone (the driver exited) only drops ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("vectune")

#: seconds between progress lines when stderr is not a terminal
LOG_EVERY = 30.0
#: seconds between polls of the counter
POLL_EVERY = 0.5


class Counter:
    """Ray actor: a running count (and the latest extra fields, e.g. the loss)."""

    def __init__(self):
        self.done = 0
        self.info: dict = {}

    def add(self, n: int, **info) -> None:
        self.done += n
        self.info.update(info)

    def set(self, done: int, **info) -> None:
        self.done = done
        self.info.update(info)

    def read(self) -> tuple[int, dict]:
        return self.done, dict(self.info)


def tick(counter, n: int = 1, **info) -> None:
    """Advance `counter` by `n` from a worker; a None counter (no display) is ignored."""
    if counter is not None:
        counter.add.remote(n, **info)


def tick_to(counter, done: int, **info) -> None:
    """Set `counter` to `done` (training after a restart re-reports its step, never double counts)."""
    if counter is not None:
        counter.set.remote(done, **info)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _describe(info: dict) -> str:
    return "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in info.items())


@contextmanager
def track(description: str, total: int, *, unit: str = "docs") -> Iterator[object | None]:
    """A counter actor for workers to tick, shown until the block exits.

    Yields None (no display, nothing to tick) when Ray is not running.
    """
    import ray

    if not ray.is_initialized() or total <= 0:
        yield None
        return
    from vectune import _console as console

    counter = ray.remote(Counter).options(num_cpus=0).remote()
    stop = threading.Event()
    started = time.monotonic()

    def read() -> tuple[int, dict]:
        try:
            return ray.get(counter.read.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the display must never fail the work
            return -1, {}

    def poll_bar() -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        with Progress(*columns, console=console.err, transient=True) as bar:
            task = bar.add_task(description, total=total, info="")
            while not stop.wait(POLL_EVERY):
                done, info = read()
                if done >= 0:
                    bar.update(task, completed=min(done, total), info=_describe(info).lstrip(", "))

    def poll_log() -> None:
        last = started
        while not stop.wait(POLL_EVERY):
            if time.monotonic() - last < LOG_EVERY:
                continue
            last = time.monotonic()
            done, info = read()
            if done <= 0:
                continue
            elapsed = last - started
            rate = done / elapsed
            left = f", ~{_eta((total - done) / rate)} left" if 0 < done < total else ""
            log.info("%s: %d/%d %s (%d%%), %.3g %s/s%s%s", description, done, total, unit, 100 * done // total,
                     rate, unit, left, _describe(info))

    thread = threading.Thread(target=poll_bar if console.err.is_terminal else poll_log, daemon=True,
                              name=f"vectune-progress-{description}")
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join(timeout=5)
        ray.kill(counter)
