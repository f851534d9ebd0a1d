"""The whole spec: one typed object that every stage receives."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from vectune.spec._base import Section
from vectune.spec.bm25 import Bm25Spec
from vectune.spec.data import DataSpec
from vectune.spec.evaluate import EvaluateSpec
from vectune.spec.index import IndexSpec
from vectune.spec.mine import MineSpec
from vectune.spec.model import ModelSpec
from vectune.spec.runtime import RuntimeSpec
from vectune.spec.search import SearchSpec
from vectune.spec.train import TrainSpec
from vectune.spec.tune import TuneSpec

SPEC_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Spec(Section):
    """A vectune spec (YAML). See `vectune schema` for every field."""

    version: Literal[1] = Field(description="Spec format version; this vectune reads 1.")
    name: str = Field(description="Names the runs folder and the Qdrant collection (lower-case, digits, - and _).")
    data: DataSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    mine: MineSpec = Field(default_factory=MineSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    index: IndexSpec = Field(default_factory=IndexSpec)
    bm25: Bm25Spec = Field(default_factory=Bm25Spec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    tune: TuneSpec = Field(default_factory=TuneSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)

    _source: Path | None = PrivateAttr(default=None)
    #: `--set` overrides applied before validation (dotted key -> value), recorded in run manifests
    _overrides: dict = PrivateAttr(default_factory=dict)
    #: fields a run resolved (`vectune.precision`): dotted key -> (requested, resolved)
    _requested: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _served(self) -> "Spec":
        if self.search.mode == "hybrid" and self.index.sparse != "bm25":
            raise ValueError("search.mode: hybrid fuses BM25 with the dense vectors, so every point needs its BM25 "
                             "vector: set index.sparse: bm25 (or search.mode: dense)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use 1-63 lower-case letters, digits, `-` or `_`, starting with a letter or digit")
        return value

    # -- where it came from --------------------------------------------------------
    @property
    def source(self) -> Path | None:
        """The YAML file this spec was loaded from (None for a spec built in code)."""
        return self._source

    @property
    def overrides(self) -> dict:
        """The `--set` overrides this spec was loaded with (dotted key -> value)."""
        return dict(self._overrides)

    def derived(self, **update) -> "Spec":
        """A copy with some sections (or the name) replaced, from the same source file."""
        out = self.model_copy(update=update)
        out._source = self._source
        return out

    def revalidated(self, mapping: dict) -> "Spec":
        """`mapping` (this spec's canonical form, edited) validated again, same source file."""
        out = type(self).model_validate(mapping)
        out._source = self._source
        out._overrides = dict(self._overrides)
        return out

    # -- paths -----------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the spec are resolved against."""
        return self._source.parent if self._source else Path.cwd()

    def resolve(self, path: str, *, data: bool = True) -> str:
        """Resolve a spec path: URIs pass through, relative paths join the spec folder
        (and `data.root` for data files)."""
        if "://" in path:
            return path
        p = Path(path).expanduser()
        if p.is_absolute():
            return str(p)
        base = self.base_dir
        if data:
            root = Path(self.data.root).expanduser()
            if "://" in self.data.root:
                return self.data.root.rstrip("/") + "/" + path
            base = root if root.is_absolute() else base / root
        return str((base / p).resolve())

    def runs_root(self) -> str:
        """Where runs are written: VECTUNE_RUNS, else `runtime.storage`, else
        `runtime.runs` (relative to the working directory, like any CLI output)."""
        root = self.runtime.runs_root()
        if "://" in root:
            return root
        return str(Path(root).expanduser().resolve())

    # -- identity --------------------------------------------------------------
    def canonical(self) -> dict:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """Stable hash of every setting (defaults included), as the user wrote them: a field a
        run resolved (`precision: auto` -> fp32) counts as written, so the spec a run, a model
        card and a collection stamp name is the spec file's; what it resolved to is recorded
        beside it (the manifest's `precision`), and `section_digest` keys the resolved value."""
        dump = self.canonical()
        for field, (requested, resolved) in self._requested.items():
            section, key = field.split(".", 1)
            if dump.get(section, {}).get(key) == resolved:
                dump[section][key] = requested
        blob = json.dumps(dump, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def section_digest(self, *names: str) -> str:
        dump = self.canonical()
        blob = json.dumps({n: dump[n] for n in names}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
