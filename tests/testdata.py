"""Small hand-made test data and writers, importable from any test module
(`pythonpath = tests` in pyproject). Not a conftest: a module named `conftest` is
ambiguous once several test folders have one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: the `vectune` console script of the interpreter running the tests
VECTUNE = str(Path(sys.executable).with_name("vectune"))

#: the shared BEIR SciFact copy, next to the repository (never copied into it)
SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def cli_env(**extra) -> dict:
    """The environment for a `vectune` child process: offline, and none of the test session's
    own VECTUNE_* settings (its fault registry, runs folder) unless passed in `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VECTUNE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def vectune(*args, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """Run `vectune ARGS` as a user would, in its own process; output captured as text."""
    return subprocess.run([VECTUNE, *map(str, args)], capture_output=True, text=True, env=env or cli_env(),
                          timeout=timeout, **kwargs)


def write_qrels(path: Path, qrels: dict[str, dict[str, int]], *, crlf: bool = True, header: bool = True) -> None:
    """Write BEIR qrels (`query-id  corpus-id  score`), CRLF and with a header as BEIR ships them."""
    end = "\r\n" if crlf else "\n"
    rows = (["query-id\tcorpus-id\tscore"] if header else []) + [
        f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(r + end for r in rows).encode("utf-8"))


TINY_CORPUS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers the risk of heart attack."},
    {"_id": "d2", "title": "", "text": "Vitamin C does not cure the common cold."},
    {"_id": "d3", "title": "Sleep", "text": "Adults need seven hours of sleep."},
    {"_id": "d4", "title": "Coffee", "text": "Coffee drinkers live longer in cohort studies."},
]
TINY_QUERIES = [
    {"_id": "q1", "text": "Does aspirin prevent heart attacks?"},
    {"_id": "q2", "text": "Is vitamin C a cure for colds?"},
]
TINY_QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}}
#: 11 lines, so a section a test appends starts on line 12
TINY_SPEC = """\
# a four-document BEIR folder
version: 1
name: tiny
data:
  corpus: {{path: corpus.jsonl}}
  queries: {{path: queries.jsonl}}
  splits:
    test: {{path: qrels/test.tsv}}
runtime:
  runs: {runs}
  num_cpus: 2
"""


def other_model(tmp: Path) -> str:
    """The packaged model plus one file: loads the same, fingerprints differently."""
    from vectune.embed import resolve_model

    src = Path(resolve_model("all-MiniLM-L6-v2"))
    dst = tmp / "other-model"
    if not dst.exists():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
        (dst / "model.safetensors").symlink_to(src / "model.safetensors")
        (dst / "variant.txt").write_text("not the model that built the collection\n")
    return str(dst)


def server_stand_in(url: str = "http://qdrant-stand-in:6333"):
    """A `ServerStore` whose client is qdrant-client's local mode in memory: the stand-in for a
    Qdrant server in tests (no server binary exists on this machine). Local mode emulates the
    server's API in-process (collections, aliases, metadata, named dense and sparse vectors,
    prefetch and fusion); vectune itself never uses it. Built through the class, not the spec:
    the test seam stays in the tests."""
    from qdrant_client import QdrantClient

    from vectune.index.server import ServerStore
    from vectune.index.store import Target

    return ServerStore(Target(url=url), QdrantClient(location=":memory:"))
