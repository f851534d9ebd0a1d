"""Every link in the project's Markdown files resolves: relative links to a file or folder of
the repository, `#anchors` to a heading of their target (GitHub's slugs), web links are
well-formed https URLs (not fetched: the tests run offline)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "runs", "node_modules", ".pytest_cache"}
DOCS = sorted(p for p in REPO.rglob("*.md") if not SKIP & set(p.relative_to(REPO).parts))
#: [text](target) outside code; images too
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return LINK.findall(text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def test_the_docs_are_found():
    names = {str(p.relative_to(REPO)) for p in DOCS}
    assert {"README.md", "benchmarks/README.md", "k8s/README.md"} <= names


def _broken(doc: Path, root: Path = REPO) -> list[str]:
    broken = []
    for target in _links(doc):
        if target.startswith(("http://", "https://")):
            url = urlparse(target)
            if url.scheme != "https" or not url.netloc:
                broken.append(f"{target}: not a well-formed https URL")
            continue
        if target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif root not in dest.parents and dest != root:
            broken.append(f"{target}: points outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(doc):
    broken = _broken(doc)
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "README.md").write_text("# KubeRay\n")
    doc = tmp_path / "README.md"
    doc.write_text("# Title\n\n[gone](../k8s/README.md) [ok](k8s/README.md#kuberay) [here](#title) "
                   "[bad anchor](#nope) [web](http://example.com) `[not](a-link)`\n")
    assert _broken(doc, tmp_path) == ["../k8s/README.md: no such file", "#nope: no heading #nope in README.md",
                                      "http://example.com: not a well-formed https URL"]


def test_slugs_match_github():
    assert _slug("Results on SciFact (this repo's spec, a 2-core CPU)") == \
        "results-on-scifact-this-repos-spec-a-2-core-cpu"
    assert _slug("Running on a cluster and on Kubernetes") == "running-on-a-cluster-and-on-kubernetes"
    assert _slug("`vectune` on Kubernetes") == "vectune-on-kubernetes"
