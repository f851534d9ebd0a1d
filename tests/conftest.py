"""Shared fixtures: the SciFact data, small BEIR slices of it, tiny hand-made data, a local Ray.

Tests never touch the network (the model is the packaged all-MiniLM-L6-v2) and never
read the whole corpus through the model: slices are a few hundred documents.
"""

from __future__ import annotations

import os

# before anything imports transformers / huggingface_hub: the model is a local folder
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a developer's own settings must not leak into tests (runs folder, resumed run)
for _var in ("VECTUNE_RUNS", "VECTUNE_RUN_ID"):
    os.environ.pop(_var, None)
# the fault registry's file (vectune._faults), named before any Ray starts so every worker
# reads it; tests switch points on by writing it. Absent, every fault point is off.
import tempfile as _tempfile  # noqa: E402

os.environ["VECTUNE_FAULTS"] = os.path.join(_tempfile.mkdtemp(prefix="vectune-faults-"), "faults.json")

import json  # noqa: E402
import random  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402
from testdata import SCIFACT, TINY_CORPUS, TINY_QRELS, TINY_QUERIES, TINY_SPEC, write_qrels  # noqa: E402,F401
import yaml  # noqa: E402


# -- test tiers ---------------------------------------------------------------------------
# `pytest` with no options runs what CI runs (`.ci/run`): unit, integration (a local Ray),
# k8s manifests and the two-node cluster; `slow` tests only with --run-slow; `gpu` tests
# only where a CUDA GPU is present. --no-cluster leaves the two-node cluster out.
def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (minutes each; not in CI)")
    parser.addoption("--no-cluster", action="store_true", default=False,
                     help="leave out tests marked cluster (they start a two-node Ray cluster with `ray start`)")


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not config.getoption("--run-slow"):
        skips["slow"] = pytest.mark.skip(reason="slow: opt in with --run-slow")
    if config.getoption("--no-cluster"):
        skips["cluster"] = pytest.mark.skip(reason="cluster: left out with --no-cluster")
    if any("gpu" in item.keywords for item in items):
        import torch

        if not torch.cuda.is_available():
            skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
    # the modules that use the local Ray run last, together, so one Ray serves them all (see
    # ray_local). (Two pytest-xdist workers on 2 cores were tried: slower, and `ray start` of the
    # cluster tests' head timed out under the load.)
    warm = {item.module for item in items if "ray_local" in item.fixturenames}
    _WARM_MODULES.update(m.__name__ for m in warm)
    items[:] = [i for i in items if i.module not in warm] + [i for i in items if i.module in warm]


#: modules whose tests share the warm local Ray (filled at collection)
_WARM_MODULES: set[str] = set()


@pytest.fixture(autouse=True)
def _no_warm_ray_elsewhere(request):
    """A test outside the warm modules meets no Ray of the session's: it may start its own,
    through vectune, and must not join one left up (a bogus runtime.address would be ignored)."""
    if request.module.__name__ not in _WARM_MODULES:
        _shutdown_ray()
    yield


#: seconds spent per tier (the folder under tests/: unit, integration, k8s, cluster), setup,
#: call and teardown together; printed at the end of the run (CI is held to 20 minutes)
_TIER_SECONDS: dict[str, float] = {}
_TIER_TESTS: dict[str, int] = {}


def pytest_runtest_logreport(report):
    parts = Path(report.fspath).parts
    tier = parts[parts.index("tests") + 1] if "tests" in parts[:-1] else "other"
    tier = tier if not tier.endswith(".py") else "top"
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration
    if report.when == "call":
        _TIER_TESTS[tier] = _TIER_TESTS.get(tier, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not _TIER_SECONDS:
        return
    terminalreporter.section("time per tier")
    for tier, seconds in sorted(_TIER_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{tier:<12} {seconds / 60:6.1f} min  ({_TIER_TESTS.get(tier, 0)} tests run)")
    terminalreporter.write_line(f"{'all':<12} {sum(_TIER_SECONDS.values()) / 60:6.1f} min")


def pytest_sessionfinish(session, exitstatus):
    _shutdown_ray()


def _shutdown_ray() -> None:
    """Shut down this process's Ray, if a test started one (never imports Ray to find out)."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


# -- SciFact and slices of it -----------------------------------------------------------
@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    """The shared SciFact folder (corpus.jsonl, queries.jsonl, qrels/); skips if absent."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact data not found at {SCIFACT}")
    return SCIFACT


@dataclass
class _SciFact:
    """SciFact held as raw lines, read once per session."""

    corpus: dict[str, str]  # doc id -> its JSONL line, byte for byte
    queries: dict[str, str]  # query id -> its JSONL line
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> qid -> docid -> score


def _read_scifact(root: Path) -> _SciFact:
    def by_id(path: Path) -> dict[str, str]:
        out = {}
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    out[json.loads(line)["_id"]] = line.rstrip("\r\n")
        return out

    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in ("train", "test"):
        rows = (root / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        for row in rows[1:]:  # header
            qid, did, score = row.split("\t")
            qrels.setdefault(split, {}).setdefault(qid, {})[did] = int(score)
    return _SciFact(by_id(root / "corpus.jsonl"), by_id(root / "queries.jsonl"), qrels)


@pytest.fixture(scope="session")
def scifact(scifact_dir) -> _SciFact:
    return _read_scifact(scifact_dir)


@dataclass
class Slice:
    """A small BEIR folder cut from SciFact, with a spec that points at it.

    Attributes:
        root: the folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv, spec.yaml, runs/).
        spec_path: the spec YAML.
        doc_ids: every document id in the slice's corpus.
        qrels: per split, the relevant documents of each chosen query.
        queries: text of every chosen query.
    """

    root: Path
    spec_path: Path
    doc_ids: list[str]
    qrels: dict[str, dict[str, dict[str, int]]]
    queries: dict[str, str]
    spec: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"

    def qrels_path(self, split: str) -> Path:
        return self.root / "qrels" / f"{split}.tsv"

    def load(self):
        """The validated `Spec`."""
        from vectune.spec import load_spec

        return load_spec(self.spec_path)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def make_slice(scifact) -> Callable[..., Slice]:
    """Factory: `make_slice(tmp_path, n_docs=300, split="test", n_queries=60, *, seed=0, spec=None)`.

    Picks `n_queries` queries of `split` ("test", "train", or a tuple of both) at random
    (seeded), puts every relevant document of theirs in the corpus, fills it up to
    `n_docs` with random other documents (so there is something to rank against), and
    writes `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv` (CRLF, with header) and
    `spec.yaml` (runs under `<tmp_path>/runs`, a 2-CPU local Ray). `spec` is merged into
    the spec mapping (for sections a test needs). Session-scoped, so module fixtures can
    use it with `tmp_path_factory.mktemp(...)`.
    """

    def make(tmp_path: Path, n_docs: int = 300, split: str | tuple[str, ...] = "test", n_queries: int = 60, *,
             seed: int = 0, spec: dict | None = None) -> Slice:
        rng = random.Random(seed)
        splits = (split,) if isinstance(split, str) else tuple(split)
        chosen: dict[str, dict[str, dict[str, int]]] = {}
        for name in splits:
            pool = sorted(scifact.qrels[name])
            picked = sorted(rng.sample(pool, min(n_queries, len(pool))))
            chosen[name] = {q: dict(scifact.qrels[name][q]) for q in picked}
        positives = sorted({d for qrels in chosen.values() for docs in qrels.values() for d in docs})
        others = sorted(set(scifact.corpus) - set(positives))
        fillers = rng.sample(others, max(0, n_docs - len(positives)))
        doc_ids = positives + fillers
        rng.shuffle(doc_ids)  # positives are not bunched at the top of the file

        root = Path(tmp_path)
        root.mkdir(parents=True, exist_ok=True)
        (root / "corpus.jsonl").write_text("".join(scifact.corpus[d] + "\n" for d in doc_ids), encoding="utf-8")
        qids = sorted({q for qrels in chosen.values() for q in qrels})
        (root / "queries.jsonl").write_text("".join(scifact.queries[q] + "\n" for q in qids), encoding="utf-8")
        for name, qrels in chosen.items():
            write_qrels(root / "qrels" / f"{name}.tsv", qrels)

        data: dict[str, Any] = {"corpus": {"path": "corpus.jsonl"}, "queries": {"path": "queries.jsonl"}}
        if "train" in chosen:
            data["train"] = {"path": "qrels/train.tsv"}
        test_splits = {n: {"path": f"qrels/{n}.tsv"} for n in chosen if n != "train"}
        if test_splits:
            data["splits"] = test_splits
        mapping = {"version": 1, "name": "slice", "data": data,
                   "runtime": {"runs": str(root / "runs"), "num_cpus": 2}}
        mapping = _deep_merge(mapping, spec or {})
        spec_path = root / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
        queries = {q: json.loads(scifact.queries[q])["text"] for q in qids}
        return Slice(root=root, spec_path=spec_path, doc_ids=doc_ids, qrels=chosen, queries=queries, spec=mapping)

    return make


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory):
    """The user's cache directory (XDG_CACHE_HOME: int8 variants of packaged models) is the
    session's own: tests never write to the real one, and build what a clean machine builds
    (once per session, found by every later test). Child processes inherit it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> str:
    """A 1-layer, 384-wide BERT with random weights and MiniLM's tokenizer, as a
    sentence-transformers folder (`vectune.embed.models.random_model`): for tests of the
    pipeline's plumbing (resume, kills, leases, syncs), where the model's quality is not what
    is tested; several times cheaper to encode and train than all-MiniLM-L6-v2."""
    from vectune.embed.models import random_model

    return random_model(tmp_path_factory.mktemp("random-model"))


# -- tiny hand-made BEIR data (for loaders and malformed-input tests) -----------------
@pytest.fixture
def tiny_beir(tmp_path) -> Slice:
    """A four-document BEIR folder with a valid spec, for tests to break one file at a time.

    Lines: corpus.jsonl d1..d4 on lines 1..4; qrels/test.tsv has a header on line 1;
    spec.yaml is `TINY_SPEC` (version on line 2, name on line 3, 11 lines).
    """
    root = tmp_path / "tiny"
    root.mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TINY_CORPUS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TINY_QUERIES), encoding="utf-8")
    write_qrels(root / "qrels" / "test.tsv", TINY_QRELS)
    spec_path = root / "spec.yaml"
    spec_path.write_text(TINY_SPEC.format(runs=tmp_path / "runs"), encoding="utf-8")
    mapping = yaml.safe_load(spec_path.read_text())
    return Slice(root=root, spec_path=spec_path, doc_ids=[r["_id"] for r in TINY_CORPUS],
                 qrels={"test": TINY_QRELS}, queries={r["_id"]: r["text"] for r in TINY_QUERIES}, spec=mapping)


# -- Ray ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local(request):
    """A local 2-CPU Ray for a test module. It stays up for the next module that asks for it
    (collection runs those modules last, one after another; the session's end, or a test
    elsewhere when a subset runs in another order, shuts it down):
    a fresh Ray costs each module ~6 s to start and its first tasks another few seconds to
    import torch in new workers. A module that left CPUs held gets a fresh one."""
    import ray

    from vectune.runtime import init_ray
    from vectune.spec.runtime import RuntimeSpec

    if ray.is_initialized() and not _ray_idle(ray):
        import warnings

        warnings.warn(f"ray_local: CPUs still held when {request.module.__name__} began: Ray restarted",
                      stacklevel=1)
        ray.shutdown()
    init_ray(RuntimeSpec(num_cpus=2))  # joins the one still up
    yield ray


def _ray_idle(ray, wait: float = 10.0) -> bool:
    """Whether every CPU of the local Ray is free again (within `wait` s): a module that left
    an actor or task holding one would starve the next module's Ray Data (STACK-NOTES: the
    Ray Data hang). Actors that hold no CPU (Ray Data's stats actor, progress counters) stay."""
    import time

    deadline = time.monotonic() + wait
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


# -- scratch space ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def shm():
    """A scratch folder on tmpfs when there is one: the embedded Qdrant engine is disk-bound."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="vectune-it-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    yield root
    shutil.rmtree(root, ignore_errors=True)
