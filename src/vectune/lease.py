"""One writer per alias: a lease taken before anything that can move an alias (`run` from
its evaluation on, `reindex`, `rollback`) and held until the swap is done.

The lease is a small JSON file in the runs storage, `<runs>/_leases/<key>.json`, where
`key` names the Qdrant the alias lives in and the alias: every writer of that alias sees it
(on one machine; on a cluster, through `runtime.storage`, the shared mount its nodes and its
jobs use). It holds the holder (run id, host, pid, since) and a heartbeat its holder's thread
renews every `ttl / 4` seconds. A second writer fails at once naming the holder, or waits
`wait` seconds for it; a lease whose heartbeat is older than `ttl` belongs to a crashed
holder and is taken over, at once when the holder was a process on this host that is gone. Taking or breaking it happens under an exclusive `flock` of a
sidecar file, held for milliseconds, so two writers never both win.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from vectune.errors import VectuneError
from vectune.spec import Spec

log = logging.getLogger(__name__)


class LeaseHeld(VectuneError):
    """Another writer holds the alias (exit 1): its run id, host and since are in the message."""


def lease_path(spec: Spec) -> Path:
    """The lease file of the spec's alias in the spec's Qdrant."""
    from vectune.index import collections as cols
    from vectune.index.store import target
    from vectune.runs import runs_folder

    where = target(spec).describe()
    alias = cols.alias_name(spec)
    digest = hashlib.sha256(f"{where}\n{alias}".encode()).hexdigest()[:12]
    return runs_folder(spec) / "_leases" / f"{alias}-{digest}.json"


def _read(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_suffix(".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _gone(holder: dict) -> bool:
    """Whether the holder was a process on this host that no longer runs (a crash, a kill):
    its lease need not wait for the expiry."""
    if holder.get("host") != platform.node() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _describe(holder: dict, age: float) -> str:
    return (f"run {holder.get('run_id', '?')} on {holder.get('host', '?')} (pid {holder.get('pid', '?')}), "
            f"since {holder.get('since', '?')}, last heartbeat {age:.0f} s ago")


@contextmanager
def alias_lease(spec: Spec, run_id: str, *, wait: float = 0.0) -> Iterator[dict]:
    """Hold the lease of the spec's alias for the duration of the block.

    Raises:
        LeaseHeld: another live writer holds it, and `wait` seconds passed without it letting go.
    """
    ttl = spec.index.lease_ttl
    path = lease_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"run_id": run_id, "host": platform.node(), "pid": os.getpid(),
          "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": os.urandom(8).hex()}
    deadline = time.monotonic() + wait
    announced = False
    while True:
        with _locked(path):
            holder = _read(path) if path.exists() else None
            age = time.time() - path.stat().st_mtime if holder is not None else 0.0
            gone = holder is not None and _gone(holder)
            if holder is None or age > ttl or gone or holder.get("token") == me["token"]:
                if holder:
                    log.warning("taking over the lease of the alias from %s: %s", _describe(holder, age),
                                "its process is gone from this host" if gone else
                                f"its heartbeat stopped (> {ttl:g} s)")
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(me))
                os.replace(tmp, path)
                break
        if time.monotonic() >= deadline:
            raise LeaseHeld(f"another writer holds the alias of {spec.name}: {_describe(holder, age)}; it moves the "
                            f"alias until it is done. Wait for it (--wait SECONDS), or, if it died, its lease "
                            f"expires {max(0.0, ttl - age):.0f} s from now (index.lease_ttl {ttl:g} s)")
        if not announced:
            log.info("waiting for the lease held by %s", _describe(holder, age))
            announced = True
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl / 4):
            with _locked(path):
                if _read(path).get("token") != me["token"]:
                    log.error("the lease of the alias was taken over by another writer")
                    return
                os.utime(path)

    beat = threading.Thread(target=heartbeat, name="vectune-lease", daemon=True)
    beat.start()
    try:
        yield {k: v for k, v in me.items() if k != "token"} | {"path": str(path)}
    finally:
        stop.set()
        beat.join(timeout=5)
        with _locked(path):
            if _read(path).get("token") == me["token"]:
                path.unlink(missing_ok=True)
