"""Fault injection for vectune's own tests: one registry, a file the tests switch.

A test that must break a run at a chosen point (a worker dying mid-training, the index
load failing or hanging mid-way) writes the point and how into the JSON file that
`VECTUNE_FAULTS` names. The variable is set before Ray starts (tests/conftest.py does it
for the whole session) and vectune hands every `VECTUNE_*` variable to its Ray workers, so
every process, the driver and workers started long before the switch alike, reads the same
file. Product code marks each point with one `hit(...)` call and carries no test plumbing
through its signatures. Unset, or with no file, `hit` does nothing.

Points:
    `index.upsert`: after each upsert request. `{"after": N}` raises on the N-th request of
        a process; `"mode": "hang"` hangs there instead (after touching `"marker"`, a file
        a test waits for before killing the process), until the file `"release"` exists if
        one is named (then every later request goes on).
    `index.alias`: in the embedded engine's alias swap, after the new record is written to its
        temporary file and fsynced, before the rename that publishes it. `index.verify`: in a
        full build, after the load and the index build, before verification. Both pause: they
        touch `"marker"` and wait until the file `"release"` exists (for ever without one: a test
        kills the process there), or raise with `"mode": "raise"`.
    `train.step`: after each optimizer step. `{"at": N, "marker": PATH}` raises once at
        step N in the worker of rank `"rank"` (default 1, or 0 with one worker); the marker
        records that it happened, so a restarted worker goes on. `"mode": "kill"` SIGKILLs
        the worker's process there instead (no exception, no cleanup: a lost machine).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

ENV = "VECTUNE_FAULTS"

_counts: Counter = Counter()


def settings() -> dict:
    """The points switched on now: {point: settings} (empty when none)."""
    path = os.environ.get(ENV)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def switch(**points: dict) -> None:
    """Tests: switch these points on (and every other off), for every process at once."""
    Path(os.environ[ENV]).write_text(json.dumps(points))
    _counts.clear()


def clear() -> None:
    """Tests: switch every point off."""
    path = os.environ.get(ENV)
    if path:
        Path(path).unlink(missing_ok=True)
    _counts.clear()


def hit(point: str, **where) -> None:
    """Mark a fault point; raises (or hangs) when a test switched it on."""
    if not os.environ.get(ENV):
        return
    cfg = settings().get(point)
    if not cfg:
        return
    if point == "index.upsert":
        _counts[point] += 1
        if _counts[point] < int(cfg["after"]):
            return
        if cfg.get("mode") == "hang":
            if cfg.get("marker"):
                Path(cfg["marker"]).write_text(str(_counts[point]))
            release = Path(cfg["release"]) if cfg.get("release") else None
            while release is None or not release.exists():  # until the test kills the process, or releases it
                time.sleep(0.2)
            return
        raise RuntimeError(f"injected failure after {_counts[point]} upsert batches ({ENV})")
    if point in ("index.alias", "index.verify"):
        if cfg.get("mode") == "raise":
            raise RuntimeError(f"injected failure at {point} ({ENV})")
        if cfg.get("marker"):
            Path(cfg["marker"]).write_text(json.dumps(where))
        release = Path(cfg["release"]) if cfg.get("release") else None
        while release is None or not release.exists():  # until released, or killed
            time.sleep(0.1)
        return
    if point == "train.step":
        world = int(where.get("world", 1))
        rank = int(cfg.get("rank", min(1, world - 1)))
        marker = Path(cfg["marker"])
        if where.get("step") == int(cfg["at"]) and where.get("rank") == rank and not marker.exists():
            marker.write_text(str(where["step"]))
            if cfg.get("mode") == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected worker failure at step {where['step']}")
        return
    raise ValueError(f"unknown fault point {point!r} in {ENV}")
