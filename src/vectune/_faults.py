"""Fault injection for vectune's own tests: one registry, switched from the environment.

A test that must break a run at a chosen point (a worker dying mid-training, the index
load failing or hanging mid-way) sets `VECTUNE_FAULTS` to a JSON object naming the point
and how; vectune hands every `VECTUNE_*` variable to its Ray workers, so the switch
reaches the process where the point runs. Product code marks each point with one
`hit(...)` call and carries no test plumbing through its signatures. Unset, `hit` is one
environment lookup.

Points:
    `index.upsert`: after each upsert request. `{"after": N}` raises on the N-th request of
        a process; `"mode": "hang"` hangs there instead (after touching `"marker"`, a file
        a test waits for before killing the process).
    `train.step`: after each optimizer step. `{"at": N}` raises once at step N in the
        worker of rank `"rank"` (default 1, or 0 with one worker); `"marker"` (required)
        is the file that records it already happened, so a restarted worker goes on.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

ENV = "VECTUNE_FAULTS"

_counts: Counter = Counter()


def settings() -> dict:
    raw = os.environ.get(ENV)
    return json.loads(raw) if raw else {}


def env(**points: dict) -> dict[str, str]:
    """The environment a test sets: `env(**{"index.upsert": {"after": 3}})`."""
    return {ENV: json.dumps(points)}


def hit(point: str, **where) -> None:
    """Mark a fault point; raises (or hangs) when a test switched it on."""
    raw = os.environ.get(ENV)
    if not raw:
        return
    cfg = json.loads(raw).get(point)
    if not cfg:
        return
    if point == "index.upsert":
        _counts[point] += 1
        if _counts[point] < int(cfg["after"]):
            return
        if cfg.get("mode") == "hang":
            if cfg.get("marker"):
                Path(cfg["marker"]).write_text(str(_counts[point]))
            while True:  # until the test kills the process
                time.sleep(1)
        raise RuntimeError(f"injected failure after {_counts[point]} upsert batches ({ENV})")
    if point == "train.step":
        world = int(where.get("world", 1))
        rank = int(cfg.get("rank", min(1, world - 1)))
        marker = Path(cfg["marker"])
        if where.get("step") == int(cfg["at"]) and where.get("rank") == rank and not marker.exists():
            marker.write_text(str(where["step"]))
            raise RuntimeError(f"injected worker failure at step {where['step']}")
        return
    raise ValueError(f"unknown fault point {point!r} in {ENV}")


def reset() -> None:
    """Forget the counts of this process (tests that reuse one process)."""
    _counts.clear()
