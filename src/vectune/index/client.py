"""One way to reach Qdrant, read from the spec: the embedded engine or a server.

The embedded engine (`index.qdrant.path`, default `<runs>/qdrant`) runs inside the
process that opens it, keeps one process per folder (a file lock) and slows down past
~20k points: it is for development and small corpora. Production uses a Qdrant server
(`index.qdrant.url`), which takes writes from many Ray workers at once. Both go
through the same `QdrantClient` API, so every other module has one code path.

The server's API key is read from the environment variable the spec names
(`api_key_env`); it is never written to the spec, a log, an error or the manifest.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vectune._redact import redact
from vectune.errors import IndexingError, Problem, SpecError
from vectune.spec import Spec

log = logging.getLogger(__name__)

MEMORY = ":memory:"


class Secret:
    """A value that never prints: repr, str and pickled logs show `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True)
class Target:
    """Where Qdrant is and how to talk to it; picklable, so Ray workers can connect too.

    Attributes:
        url: a server URL, or None for the embedded engine.
        path: the embedded engine's folder (or `:memory:`), or None for a server.
        api_key: the server key, masked in every repr; None when the spec names none.
        api_key_env: the environment variable it came from (named in messages).
    """

    url: str | None = None
    path: str | None = None
    prefer_grpc: bool = False
    timeout: float = 30.0
    retries: int = 3
    api_key_env: str | None = None
    api_key: Secret | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.url is None

    def describe(self) -> str:
        """Where this is, for messages and the manifest (never the key)."""
        return redact(self.url) if self.url else f"embedded engine at {self.path}"


def target(spec: Spec) -> Target:
    """The spec's Qdrant location, with the API key read from its environment variable."""
    q = spec.index.qdrant
    if q.url:
        key = None
        if q.api_key_env:
            value = os.environ.get(q.api_key_env)
            if not value:
                raise SpecError(str(spec.source or "<spec>"), [Problem(
                    "index.qdrant.api_key_env",
                    f"environment variable {q.api_key_env} is not set (it should hold the Qdrant API key)")])
            key = Secret(value)
        return Target(url=q.url, prefer_grpc=q.prefer_grpc, timeout=q.timeout, retries=q.retries,
                      api_key_env=q.api_key_env, api_key=key)
    return Target(path=embedded_path(spec), timeout=q.timeout, retries=q.retries)


def embedded_path(spec: Spec) -> str:
    """`index.qdrant.path` resolved against the spec's folder, or `<runs>/qdrant`."""
    path = spec.index.qdrant.path
    if path == MEMORY:
        return MEMORY
    if path:
        return spec.resolve(path, data=False)
    runs = spec.runs_root()
    if "://" in runs:
        raise SpecError(str(spec.source or "<spec>"), [Problem(
            "index.qdrant", f"runs are stored at {runs}, which the embedded Qdrant engine cannot use; "
                            "set index.qdrant.path to a local folder or index.qdrant.url to a server")])
    return str(Path(runs) / "qdrant")


def connect(spec: Spec):
    """A `QdrantClient` for the spec, checked to answer (see `open_target`)."""
    return open_target(target(spec))


def open_target(where: Target):
    """Open a client and make one cheap call, retrying a server that refuses connections.

    Retries `where.retries` times with exponential backoff (0.5 s, 1 s, 2 s, ... capped at
    8 s), then raises IndexingError. An authentication failure is not retried.

    Raises:
        IndexingError: Qdrant cannot be reached, refuses the key, or the embedded folder is
            held by another process.
    """
    from qdrant_client import QdrantClient

    if where.embedded:
        try:
            client = QdrantClient(location=MEMORY) if where.path == MEMORY else QdrantClient(path=where.path)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise IndexingError(
                    f"the embedded Qdrant at {where.path} is open in another process (a reindex running?); "
                    "the embedded engine allows one process at a time: wait for it, or use a Qdrant server "
                    "(index.qdrant.url)"
                ) from None
            raise IndexingError(f"cannot open the embedded Qdrant at {where.path}: {exc}") from None
        except (OSError, ValueError) as exc:  # a file where the folder should be, no permission
            raise IndexingError(f"cannot open the embedded Qdrant at {where.path} (index.qdrant.path): "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        return client

    attempts = 1 + max(0, where.retries)
    last = ""
    for attempt in range(attempts):
        client = QdrantClient(
            url=where.url,
            api_key=where.api_key.reveal() if where.api_key else None,
            prefer_grpc=where.prefer_grpc,
            timeout=int(math.ceil(where.timeout)),
            # qdrant-client's own probe (same major, minors at most one apart) warns on a server
            # too old or too new for this client; a refused probe warns once per process
            check_compatibility=True,
        )
        try:
            client.get_collections()
            return client
        except Exception as exc:  # noqa: BLE001 - classified below, never re-raised raw
            client.close()
            kind, last = _classify(exc)
            last = redact(last)
            if kind == "auth":
                hint = (f" (check the key in ${where.api_key_env})" if where.api_key_env
                        else " (set index.qdrant.api_key_env)")
                raise IndexingError(f"Qdrant at {where.describe()} rejected the API key{hint}") from None
            if kind == "fatal":
                raise IndexingError(f"Qdrant at {where.describe()} answered with an error: {last}") from None
        if attempt + 1 < attempts:
            delay = min(8.0, 0.5 * 2**attempt)
            log.warning("Qdrant at %s unreachable (%s); retry %d/%d in %.1f s", where.describe(), last, attempt + 1,
                        attempts - 1, delay)
            time.sleep(delay)
    raise IndexingError(f"cannot reach Qdrant at {where.describe()} after {attempts} attempt(s): {last}. "
                        "Is the server running and the URL (and port) right?")


def _classify(exc: Exception) -> tuple[str, str]:
    """("retry" | "auth" | "fatal", a short reason without secrets) for a failed call."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        code = exc.status_code
        if code in (401, 403):
            return "auth", f"HTTP {code}"
        return ("retry" if code in (502, 503, 504) else "fatal"), f"HTTP {code}"
    if isinstance(exc, ResponseHandlingException):
        return "retry", str(exc.source) if getattr(exc, "source", None) else type(exc).__name__
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            code = exc.code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return "auth", code.name
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "retry", f"gRPC {code.name}: connection refused or timed out"
            return "fatal", f"gRPC {code.name}"
    except ImportError:  # pragma: no cover - grpc ships with qdrant-client
        pass
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return "retry", type(exc).__name__
    return "fatal", type(exc).__name__
