"""Runs: ids, folders, the manifest (lineage), and stage bookkeeping for resume."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from vectune._redact import redact, redact_tree
from vectune.errors import DataError, InputError, StageError
from vectune.spec import Spec

log = logging.getLogger(__name__)

_PACKAGES = ["vectune", "ray", "torch", "sentence-transformers", "transformers", "qdrant-client", "pyarrow",
             "numpy", "pydantic", "pytrec-eval-terrier"]


#: a run id names a folder under <runs>/<spec name>/ and a Qdrant collection suffix:
#: never a path (no `/`, no `..`), never hidden, at most 64 characters
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def check_run_id(run_id: str, where: str = "--run-id", *, nested: bool = False) -> str:
    """`run_id` if it can name a run folder and a collection; InputError (exit 2) otherwise.
    `nested`: vectune's own runs inside a run (`<tune run>/trials/<trial>`), each part checked."""
    parts = run_id.split("/") if nested and isinstance(run_id, str) else [run_id]
    if not all(isinstance(part, str) and RUN_ID.match(part) for part in parts):
        raise InputError(where, f"{run_id!r} is not a run id: use letters, digits, `_` and `-` "
                                "(starting with a letter or digit, at most 64), never a path")
    return run_id


def runs_folder(spec: Spec) -> Path:
    """The spec's runs folder, checked: a folder (or nothing yet), never a file."""
    root = spec.runs_root()
    if "://" in root:
        return Path(root)
    path = Path(root)
    setting = "$VECTUNE_RUNS" if os.environ.get("VECTUNE_RUNS") else (
        "runtime.storage" if spec.runtime.storage else "runtime.runs")
    if path.exists() and not path.is_dir():
        raise InputError(setting, f"{root} is a file, not a folder for runs")
    return path


def read_manifest(path: Path) -> dict:
    """A run's manifest; a truncated or hand-broken one is an error naming the file and line."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(str(path), f"not a valid run manifest ({exc.msg}, column {exc.colno}); "
                                   "move the run folder away or pass another --run-id", exc.lineno) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(str(path), f"cannot read the run manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise DataError(str(path), "not a valid run manifest (not a JSON object)")
    return manifest


def _manifests(root: Path) -> Iterator[tuple[Path, dict]]:
    """(run folder, manifest) under `root`, oldest first; broken manifests are skipped with a warning."""
    if not root.is_dir():
        return
    for d in sorted(root.iterdir()):
        if not RUN_ID.match(d.name) or not (d / "manifest.json").is_file():
            continue
        try:
            yield d, read_manifest(d / "manifest.json")
        except DataError as exc:
            log.warning("skipping run %s: %s", d.name, exc)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def inputs_digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


class Run:
    """One run of a spec: `<runs>/<name>/<run_id>/` with `manifest.json` and artifacts."""

    def __init__(self, spec: Spec, run_id: str, manifest: dict, *, nested: bool = False):
        self.spec = spec
        self.id = check_run_id(run_id, nested=nested)
        self.dir = runs_folder(spec) / spec.name / run_id
        self.manifest = manifest

    # -- opening -----------------------------------------------------------------
    @classmethod
    def create(cls, spec: Spec, run_id: str | None = None, *, nested: bool = False) -> "Run":
        run_id = new_run_id() if run_id is None else run_id
        run = cls(spec, run_id, {}, nested=nested)
        if (run.dir / "manifest.json").exists():
            return cls.open(spec, run_id, nested=nested)
        try:
            run.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(str(run.dir), f"cannot make the run folder: {exc.strerror or exc}") from None
        run.manifest = {
            "run_id": run_id,
            "name": spec.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "spec_hash": spec.digest(),
            "spec_file": str(spec.source) if spec.source else None,
            "spec": redact_tree(spec.canonical()),
            "overrides": spec.overrides,  # `--set` keys and values, already inside spec and spec_hash
            "data": {},
            "models": {},
            "packages": package_versions(),
            "host": platform.node(),
            "stages": {},
        }
        run.save()
        return run

    @classmethod
    def open(cls, spec: Spec, run_id: str, *, nested: bool = False) -> "Run":
        run = cls(spec, run_id, {}, nested=nested)
        path = run.dir / "manifest.json"
        if not path.exists():
            raise StageError(f"no run {run_id!r} of spec {spec.name!r} under {spec.runs_root()}")
        run.manifest = manifest = read_manifest(path)
        if manifest.get("spec_hash") != spec.digest():
            manifest.setdefault("spec_history", []).append(manifest.get("spec_hash"))
            manifest["spec_hash"] = spec.digest()
            manifest["spec"] = redact_tree(spec.canonical())
            manifest["overrides"] = spec.overrides
            run.save()
        return run

    @classmethod
    def latest(cls, spec: Spec, *, with_stage: str | None = None) -> "Run | None":
        """The newest run of this spec (optionally: whose `with_stage` finished)."""
        for d, manifest in reversed(list(_manifests(runs_folder(spec) / spec.name))):
            if with_stage is None or manifest.get("stages", {}).get(with_stage, {}).get("status") == "done":
                return cls(spec, d.name, manifest)
        return None

    @classmethod
    def all(cls, spec: Spec) -> list["Run"]:
        return [cls(spec, d.name, manifest) for d, manifest in _manifests(runs_folder(spec) / spec.name)]

    # -- files -------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.dir / "manifest.json", self.manifest)

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, payload)
        return path

    def read_json(self, name: str) -> Any:
        path = self.path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def record(self, key: str, value: Any) -> None:
        """Set a top-level manifest entry (data hashes, models, gate, collection...)."""
        self.manifest[key] = value
        self.save()

    # -- stages ------------------------------------------------------------------
    def stage_info(self, name: str) -> dict:
        return self.manifest.setdefault("stages", {}).get(name, {})

    def is_done(self, name: str, inputs: dict[str, Any] | None = None) -> bool:
        info = self.stage_info(name)
        if info.get("status") != "done":
            return False
        return inputs is None or info.get("inputs") == inputs_digest(inputs)

    @contextmanager
    def stage(self, name: str, inputs: dict[str, Any] | None = None) -> Iterator[dict]:
        """Record a stage's status, timing and outputs; yields a dict for its outputs."""
        outputs: dict = {}
        stages = self.manifest.setdefault("stages", {})
        stages[name] = {"status": "running", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "inputs": inputs_digest(inputs or {})}
        self.save()
        start = time.perf_counter()
        try:
            yield outputs
        except BaseException as exc:
            stages[name].update(status="failed", error=redact(f"{type(exc).__name__}: {exc}")[:2000],
                                seconds=round(time.perf_counter() - start, 2))
            self.save()
            raise
        stages[name].update(status="done", seconds=round(time.perf_counter() - start, 2), outputs=outputs,
                            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.save()


# -- lineage ------------------------------------------------------------------------------
def base_model_path(spec: Spec) -> str:
    """The spec's base model as a local folder (a registry name or hub id resolved), checked
    against the sequence lengths the spec asks of it."""
    from vectune.embed.models import check_sequence_lengths, model_limits, resolve_model
    from vectune.errors import ModelError

    try:
        path = resolve_model(spec.model.base, spec.base_dir)
        model_limits(path)  # its configs readable, its weights there
    except ModelError as exc:
        raise ModelError(f"model.base: {exc}") from None
    check_sequence_lengths(path, {"model.max_seq_length": spec.model.max_seq_length,
                                  "train.max_seq_length": spec.train.max_seq_length})
    return path


def record_lineage(run: Run, data) -> None:
    """Data file hashes and the base model's fingerprint, once per run (`data` a DomainData)."""
    from vectune.embed import model_fingerprint

    if not run.manifest.get("data"):
        run.record("data", data.file_hashes())
    models = run.manifest.setdefault("models", {})
    if "base" not in models:
        path = base_model_path(run.spec)
        models["base"] = {"name": run.spec.model.base, "path": path, "fingerprint": model_fingerprint(path)}
        run.save()
