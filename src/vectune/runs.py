"""Runs: ids, folders, the manifest (lineage), and stage bookkeeping for resume."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from vectune.errors import StageError
from vectune.spec import Spec

_PACKAGES = ["vectune", "ray", "torch", "sentence-transformers", "transformers", "qdrant-client", "pyarrow",
             "numpy", "pydantic", "pytrec-eval-terrier"]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


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

    def __init__(self, spec: Spec, run_id: str, manifest: dict):
        self.spec = spec
        self.id = run_id
        self.dir = Path(spec.runs_root()) / spec.name / run_id
        self.manifest = manifest

    # -- opening -----------------------------------------------------------------
    @classmethod
    def create(cls, spec: Spec, run_id: str | None = None) -> "Run":
        run_id = run_id or new_run_id()
        run = cls(spec, run_id, {})
        if (run.dir / "manifest.json").exists():
            return cls.open(spec, run_id)
        run.dir.mkdir(parents=True, exist_ok=True)
        run.manifest = {
            "run_id": run_id,
            "name": spec.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "spec_hash": spec.digest(),
            "spec_file": str(spec.source) if spec.source else None,
            "spec": spec.canonical(),
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
    def open(cls, spec: Spec, run_id: str) -> "Run":
        path = Path(spec.runs_root()) / spec.name / run_id / "manifest.json"
        if not path.exists():
            raise StageError(f"no run {run_id!r} of spec {spec.name!r} under {spec.runs_root()}")
        manifest = json.loads(path.read_text())
        run = cls(spec, run_id, manifest)
        if manifest.get("spec_hash") != spec.digest():
            manifest.setdefault("spec_history", []).append(manifest.get("spec_hash"))
            manifest["spec_hash"] = spec.digest()
            manifest["spec"] = spec.canonical()
            manifest["overrides"] = spec.overrides
            run.save()
        return run

    @classmethod
    def latest(cls, spec: Spec, *, with_stage: str | None = None) -> "Run | None":
        """The newest run of this spec (optionally: whose `with_stage` finished)."""
        root = Path(spec.runs_root()) / spec.name
        if not root.is_dir():
            return None
        for d in sorted((p for p in root.iterdir() if (p / "manifest.json").exists()), reverse=True):
            manifest = json.loads((d / "manifest.json").read_text())
            if with_stage is None or manifest.get("stages", {}).get(with_stage, {}).get("status") == "done":
                return cls(spec, d.name, manifest)
        return None

    @classmethod
    def all(cls, spec: Spec) -> list["Run"]:
        root = Path(spec.runs_root()) / spec.name
        if not root.is_dir():
            return []
        return [cls(spec, d.name, json.loads((d / "manifest.json").read_text()))
                for d in sorted(root.iterdir()) if (d / "manifest.json").exists()]

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
            stages[name].update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                                seconds=round(time.perf_counter() - start, 2))
            self.save()
            raise
        stages[name].update(status="done", seconds=round(time.perf_counter() - start, 2), outputs=outputs,
                            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.save()


# -- lineage ------------------------------------------------------------------------------
def base_model_path(spec: Spec) -> str:
    """The spec's base model as a local folder (a registry name or hub id resolved)."""
    from vectune.embed import resolve_model

    return resolve_model(spec.model.base, spec.base_dir)


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
