"""Progress of long work that happens in Ray workers, shown on the driver.

Encoding a corpus and training run in encoder actors and Ray Train workers, not in the
process the user watches. Those workers tick a small counter actor; the driver polls it
and draws a progress bar on stderr when stderr is a terminal, or logs a line at once, one every
`LOG_EVERY` seconds and a last one at the end when it is not (a log file, `ray job logs`,
`kubectl logs`).

    with track("encode corpus", total=5183, unit="docs") as counter:
        ds = embed_dataset(..., progress=counter)   # the encoder actors call counter.add
        consume(ds)

Ticks are fire-and-forget (`add.remote` without waiting), so a worker never blocks on the
display; a counter that is gone (the driver exited) only drops ticks. Work in the driver's
own process (no Ray, or `local=True`) ticks a plain `Counter` the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("vectune")

#: seconds between progress lines when stderr is not a terminal (a line at least this often,
#: whether or not the count moved: a phase is never silent for longer)
LOG_EVERY = 15.0
#: seconds between polls of the counter
POLL_EVERY = 0.5


class Counter:
    """A running count (and the latest extra fields, e.g. the loss): a Ray actor that workers
    tick, or a plain object in this process when no Ray runs."""

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
    if isinstance(counter, Counter):
        counter.add(n, **info)
    elif counter is not None:
        counter.add.remote(n, **info)


def tick_to(counter, done: int, **info) -> None:
    """Set `counter` to `done` (training after a restart re-reports its step, never double counts)."""
    if isinstance(counter, Counter):
        counter.set(done, **info)
    elif counter is not None:
        counter.set.remote(done, **info)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _describe(info: dict) -> str:
    return "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in info.items())


class Rate:
    """Units per second measured from the work's own pace, once warm-up is over.

    Start-up (Ray, actors, model loading, a first step's compilation) ends when the count
    first moves; the rate is measured from that moment on: (done - done then) / (time since
    then), once the count has moved `MIN_ADVANCE` more units. So it never extrapolates the
    warm-up over every remaining unit, and one slow unit just after it (a training step that
    still warms its kernels up: measured 1.9x the later ones on 2 cores) is averaged with
    another before any estimate is shown.
    """

    MIN_ADVANCE = 2

    def __init__(self, total: int):
        self.total = total
        self._start: tuple[float, int] | None = None

    def update(self, now: float, done: int) -> None:
        if self._start is None and done > 0:
            self._start = (now, done)

    def per_second(self, now: float, done: int) -> float | None:
        if self._start is None or done < self._start[1] + self.MIN_ADVANCE or now <= self._start[0]:
            return None
        return (done - self._start[1]) / (now - self._start[0])

    def left(self, now: float, done: int) -> float | None:
        """Seconds to the end at the measured pace (None while warming up, or when done)."""
        rate = self.per_second(now, done)
        if rate is None or done >= self.total:
            return None
        return (self.total - done) / rate


def line(description: str, done: int, total: int, unit: str, elapsed: float, rate: Rate, info: dict,
         now: float) -> str:
    """One plain progress line: `train: 3/50 steps (6%), 0.027 steps/s, ~29m00s left, loss 1.2`."""
    if done <= 0:
        return f"{description}: 0/{total} {unit}, starting ({_eta(elapsed)}){_describe(info)}"
    per = rate.per_second(now, done)
    left = rate.left(now, done)
    pace = f", {per:.3g} {unit}/s" if per else ""
    eta = f", ~{_eta(left)} left" if left is not None else (", estimating time left" if done < total else "")
    return (f"{description}: {done}/{total} {unit} ({100 * done // max(total, 1)}%){pace}{eta}"
            f"{_describe(info)}")


@contextmanager
def track(description: str, total: int, *, unit: str = "docs", local: bool = False) -> Iterator[object | None]:
    """A counter for workers to tick, shown until the block exits.

    With Ray running it is an actor Ray workers tick; with `local` (or without Ray) it is a
    plain object for this process's own loops. Yields None (nothing to show) for total <= 0.
    The display: a bar on a terminal, else a line every `LOG_EVERY` seconds (a log file,
    `ray job logs`, `kubectl logs`); both estimate the time left from the work's own pace.
    """
    if total <= 0:
        yield None
        return
    import ray

    from vectune import _console as console

    remote = not local and ray.is_initialized()
    counter = ray.remote(Counter).options(num_cpus=0).remote() if remote else Counter()
    stop = threading.Event()
    started = time.monotonic()
    rate = Rate(total)

    def read(timeout: float = 10.0) -> tuple[int, dict]:
        if not remote:
            return counter.read()
        try:
            return ray.get(counter.read.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 - the display must never fail the work
            return -1, {}

    def poll_bar() -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                   TextColumn("{task.fields[left]}"), TextColumn("{task.fields[info]}"))
        with Progress(*columns, console=console.err, transient=True) as bar:
            task = bar.add_task(description, total=total, info="", left="")
            while not stop.wait(POLL_EVERY):
                done, info = read()
                if done < 0:
                    continue
                now = time.monotonic()
                rate.update(now, done)
                left = rate.left(now, done)
                bar.update(task, completed=min(done, total), info=_describe(info).lstrip(", "),
                           left=f"~{_eta(left)} left" if left is not None else "")

    def poll_log() -> None:
        # a first line at once, the phase has begun: written before the counter is read, since
        # a counter actor can take seconds to start on a busy machine
        log.info("%s", line(description, 0, total, unit, 0.0, rate, {}, started))
        last, said = started, 0
        while True:
            ending = stop.wait(POLL_EVERY)
            now = time.monotonic()
            done, info = read(2.0 if ending else 10.0)  # the phase's end waits on a last read briefly
            if done >= 0:
                rate.update(now, done)
            # a line every LOG_EVERY, and a last one when the phase ends with news since the previous
            if done < 0 or (now - last < LOG_EVERY and not (ending and done != said)):
                if ending:
                    return
                continue
            last, said = now, done
            log.info("%s", line(description, done, total, unit, now - started, rate, info, now))
            if ending:
                return

    thread = threading.Thread(target=poll_bar if console.err.is_terminal else poll_log, daemon=True,
                              name=f"vectune-progress-{description}")
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join(timeout=5)
        if remote:
            ray.kill(counter)
