"""Terminal output: results on stdout (tables, or JSON with --json), logs on stderr."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def setup_logging(verbose: bool = False) -> None:
    """vectune's own log lines on stderr; Ray's chatter only with `verbose`.

    Without it, Ray Data's per-dataset lines stay quiet (`RAY_DATA_LOG_LEVEL`, read when
    Ray Data is imported) and of the workers' output only their warnings and errors are
    forwarded to the driver's stderr (see `vectune.runtime.init_ray`): errors still arrive as
    exceptions, and progress comes from `vectune.progress`.
    """
    level = logging.DEBUG if verbose else logging.INFO
    if verbose:
        os.environ["VECTUNE_VERBOSE"] = "1"
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "INFO" if verbose else "ERROR")
    from vectune._redact import RedactingFilter

    handler = RichHandler(console=err, show_path=False)
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("vectune").setLevel(level)
    for noisy in ("ray", "ray.data", "ray.train", "ray.tune", "httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)


def print_error(exc: BaseException) -> None:
    """An error as a user reads it on stderr: a spec's problems one per line, else the message."""
    from rich.markup import escape

    from vectune._redact import redact
    from vectune.errors import SpecError

    # messages quote user data (ids, paths, YAML): escape it, or `[/x]` is read as markup
    if isinstance(exc, SpecError):
        err.print(f"[bold red]invalid spec[/] {escape(exc.source)}", highlight=False)
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False, highlight=False)
    else:
        err.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", markup=True, highlight=False)


def emit_json(payload: Any) -> None:
    """`payload` as JSON on stdout; NaN and infinities become null (JSON has neither)."""
    sys.stdout.write(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def error_payload(exc: BaseException, exit_code: int) -> dict:
    """The one JSON object `--json` prints on stdout for an error: what, which kind, the
    exit code, and where (the spec's problems with field and line, the file and line)."""
    from vectune._redact import redact
    from vectune.errors import DataError, InputError, SpecError

    payload: dict[str, Any] = {"error": redact(str(exc)), "kind": type(exc).__name__, "exit_code": exit_code}
    if isinstance(exc, SpecError):
        payload["source"] = exc.source
        payload["problems"] = [{"field": p.path, "message": p.message, "line": p.line} for p in exc.problems]
    elif isinstance(exc, DataError):
        payload.update(file=exc.path, line=exc.line)
    elif isinstance(exc, InputError):
        payload["field"] = exc.where
    return payload


def metrics_table(title: str, rows: dict[str, dict[str, float]], metrics: list[str]) -> Table:
    """One row per model (or split), one column per metric."""
    table = Table(title=title)
    table.add_column("model")
    for m in metrics:
        table.add_column(m, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{values[m]:.4f}" if m in values else "-" for m in metrics))
    return table


def kv_table(title: str, items: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in items.items():
        table.add_row(str(k), f"{v:.4f}" if isinstance(v, float) else str(v))
    return table
