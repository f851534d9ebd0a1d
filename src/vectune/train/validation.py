"""Validation on held-out *training* queries: checkpoint choice and base/tuned mixing.

The test split is never read here: the gate reads it after this stage has chosen. The
held-out queries are ranked among a small corpus cut from the mined rows (their own
positives and hard negatives first, then other mined documents), scored with the same
pytrec_eval metrics as the evaluate stage, graded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vectune.evaluate.metrics import score_run


def _cutoff(metrics) -> int:
    return max(int(m.split("@")[1]) for m in metrics)


def model_digest(model) -> str:
    """A digest of what a model computes: its modules (their settings, as the model prints them),
    its `max_seq_length` and every tensor of its state, byte for byte. Equal digests, equal
    vectors: a checkpoint scored in a training worker and the same weights loaded from its folder
    by a later task share one."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{model!r}|{getattr(model, 'max_seq_length', None)}".encode())
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _store_path(store: str, digest: str, texts: list[str], precision: str, batch_size: int) -> Path:
    """Where `_vectors` keeps the vectors of `texts` made by the model of `digest`."""
    return Path(store) / f"{digest}-{_texts_digest(texts)}-{precision}-{batch_size}.npy"


def _save(path: Path, v: np.ndarray) -> None:
    """Write `v` to `path` whole or not at all (two workers writing one key write the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, v)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _load(path: Path, rows: int) -> np.ndarray | None:
    try:
        v = np.load(path)
    except (OSError, ValueError):
        return None
    return v if v.ndim == 2 and v.shape[0] == rows else None


def _vectors(model, texts: list[str], batch_size: int, precision: str, progress=None, store: str | None = None,
             digest: str | None = None) -> np.ndarray:
    """Vectors of `texts`; with a `progress` counter, encoded in length-sorted chunks of whole
    batches (the batches one `encode` call would make) and ticked after each.

    `store` (a folder; `digest` is `model_digest(model)`) keeps them by what made them (the
    model's digest, the texts, the precision and batch size): the starting model is scored
    before step 1 in the training worker and again in the served-mode comparison, a checkpoint
    in the worker and again when it is the kept model; the second time reads the file. A missing
    or unreadable file is encoded again, so a store another node cannot see costs time, never a
    wrong vector."""
    from vectune.embed.encoder import autocast, encode_sorted, unit_rows
    from vectune.progress import tick

    path = None
    if store:
        path = _store_path(store, digest, texts, precision, batch_size)
        v = _load(path, len(texts))
        if v is not None:
            tick(progress, len(texts))
            return v

    def encode(batch: list[str]) -> np.ndarray:
        out = model.encode(batch, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        return out.float().cpu().numpy()

    with autocast(precision, model.device.type):
        v = encode_sorted(encode, texts, 4 * batch_size if progress is not None else len(texts), progress)
    v = unit_rows(v)  # renormalised in fp32
    if path is not None:
        _save(path, v)
    return v


def seed_from_cache(model, vset: dict, precision: str, batch_size: int = 64) -> int:
    """Put the starting model's validation document vectors, read from the run's embedding cache,
    in the stage's store (`vset["vectors"]`), so that scoring it before step 1 encodes only the
    queries: the mine encoded the whole corpus with this model already.

    `vset["cache"]` is the folder of this model's document vectors (`EncoderConfig.cache_dir`),
    set by the driver only where the cache's vectors are the ones validation would compute (the
    same precision, max_seq_length and prefix, normalised). Seeds only when every validation
    document is there; returns how many vectors it read (0: nothing seeded, validation encodes).
    """
    from vectune.embed.cache import EmbeddingCache, text_hashes
    from vectune.embed.encoder import unit_rows

    store, folder = vset.get("vectors"), vset.get("cache")
    if not store or not folder or not Path(folder).is_dir():
        return 0
    texts = list(vset["corpus"].values())
    path = _store_path(store, model_digest(model), texts, precision, batch_size)
    if _load(path, len(texts)) is not None:
        return 0
    found, v = EmbeddingCache(folder).lookup(text_hashes(texts))
    if v is None or not found.all():
        return 0
    _save(path, unit_rows(v))
    return len(texts)


def export_to_cache(model_path: str, vset: dict, folder: str, precision: str, max_seq_length: int | None = None,
                    batch_size: int = 64) -> int:
    """Add the validation document vectors of the model saved at `model_path`, if validation
    scored it (the kept checkpoint, or a mix), to its embedding cache `folder`, so that the
    evaluate stage encodes only the rest of the corpus. The caller passes the folder only
    where validation computes the vectors the encoders would (same precision, max_seq_length
    and prefix, normalised). Returns how many it added (0: validation never scored this model)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from vectune.embed.cache import EmbeddingCache, text_hashes

    store = vset.get("vectors")
    if not store:
        return 0
    model = SentenceTransformer(model_path, device="cpu" if not torch.cuda.is_available() else None)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    texts = list(vset["corpus"].values())
    v = _load(_store_path(store, model_digest(model), texts, precision, batch_size), len(texts))
    if v is None:
        return 0
    cache = EmbeddingCache(folder)
    hashes = text_hashes(texts)
    found, _ = cache.lookup(hashes)
    if (~found).any():
        cache.add(hashes[~found], v[~found])
        cache.compact()
    return int((~found).sum())


def retrieval_scores(model, vset: dict, metrics, batch_size: int = 64, precision: str = "fp32",
                     progress=None) -> dict[str, float]:
    """Mean metrics of `model` ranking the validation corpus for the validation queries, in
    the served mode (`vset["search"]`; dense without it). `precision: bf16` encodes under
    autocast, as training ran. `progress` is ticked by text encoded."""
    mode = (vset.get("search") or {}).get("mode", "dense")
    return mode_scores(model, vset, metrics, (mode,), batch_size, precision, progress)[mode]


def mode_scores(model, vset: dict, metrics, modes=("dense", "hybrid", "bm25"), batch_size: int = 64,
                precision: str = "fp32", progress=None) -> dict[str, dict[str, float]]:
    """Mean metrics of `model` on the validation set in each of `modes` (mode -> metrics),
    from one encoding: dense exactly in numpy; hybrid and bm25 (needing `vset["bm25"]`) in a
    scratch Qdrant Edge shard (`vectune.ranking`). `hybrid` is fused as the spec's `search`
    section says; `hybrid/<fusion>` (`hybrid/rrf`, `hybrid/dbsf`) with that fusion instead."""
    qids, dids = list(vset["queries"]), list(vset["corpus"])
    needs_dense = any(m != "bm25" for m in modes)
    q = d = None
    if needs_dense:
        store = vset.get("vectors")  # a folder that keeps vectors across the stage's processes
        digest = model_digest(model) if store else None
        q = _vectors(model, [vset["queries"][i] for i in qids], batch_size, precision, progress, store, digest)
        d = _vectors(model, [vset["corpus"][i] for i in dids], batch_size, precision, progress, store, digest)
    k = min(_cutoff(metrics), len(dids))
    search = {"fusion": "rrf", "rrf_k": 60, "prefetch": 100, **(vset.get("search") or {})}
    out = {}
    shard = None
    try:
        for mode in modes:
            if mode == "dense":
                scores = q @ d.T
                top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                run = {qid: {dids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
            else:  # as served: Qdrant ranks BM25 and fuses it with the dense candidates
                from vectune.ranking import ScratchShard

                if shard is None:
                    shard = ScratchShard(d.shape[1] if d is not None else None, True)
                    shard.add(dids, d, vset["bm25"]["docs"])
                base_mode, _, fusion = mode.partition("/")
                ranked = shard.query(k, base_mode, dense=q, sparse=vset["bm25"]["queries"],
                                     fusion=fusion or search["fusion"], rrf_k=search["rrf_k"],
                                     prefetch=search["prefetch"])
                run = dict(zip(qids, ranked))
            out[mode], _ = score_run(vset["qrels"], run, list(metrics))
    finally:
        if shard is not None:
            shard.close()
    return out


def served_modes() -> tuple[str, ...]:
    """Every way a model can be served: dense, and hybrid under each fusion (`hybrid/rrf`, ...)."""
    from vectune.ranking import FUSIONS

    return ("dense", *(f"hybrid/{f}" for f in FUSIONS))


def compare_modes(paths: dict[str, str], vset: dict, metrics, threads: int | None = None,
                  max_seq_length: int | None = None, precision: str = "fp32") -> dict[str, dict]:
    """Each model (role -> path) on the validation set in every way it can be served (dense,
    hybrid under each fusion): what validation says about the spec's `search` section, beside
    BM25 alone (the same for every model)."""
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    out = {}
    for role, path in paths.items():
        model = SentenceTransformer(path, device="cpu" if not torch.cuda.is_available() else None)
        if max_seq_length:
            model.max_seq_length = max_seq_length
        model.eval()
        modes = served_modes() + (("bm25",) if not out else ())
        out[role] = mode_scores(model, vset, metrics, modes, precision=precision)
    first = next(iter(out.values()))
    bm25 = first.pop("bm25")
    return {**{role: {m: {k: round(float(v), 6) for k, v in scores.items()} for m, scores in r.items()}
               for role, r in out.items()}, "bm25": {k: round(float(v), 6) for k, v in bm25.items()}}


def _evaluator_base():
    from sentence_transformers.evaluation import SentenceEvaluator

    return SentenceEvaluator


class RetrievalEvaluator(_evaluator_base()):
    """A sentence-transformers evaluator over the validation set (runs inside the trainer)."""

    def __init__(self, vset: dict, metrics, primary: str, name: str = "val", precision: str = "fp32",
                 progress=None, max_seq_length: int | None = None):
        super().__init__()
        self.vset, self.metrics, self.name, self.precision = vset, tuple(metrics), name, precision
        #: the served length: a model that trains on shorter texts is still scored on what the
        #: stages encode (and its checkpoints are saved at the training length, restored after)
        self.max_seq_length = max_seq_length
        #: the training's counter: while a checkpoint is scored its line says so
        self.progress = progress
        self.primary_metric = primary
        self.greater_is_better = True

    @classmethod
    def from_set(cls, vset: dict, metrics, primary: str, precision: str = "fp32",
                 progress=None, max_seq_length: int | None = None) -> "RetrievalEvaluator":
        return cls(vset, tuple(dict.fromkeys([primary, *metrics])), primary, precision=precision, progress=progress,
                   max_seq_length=max_seq_length)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        from vectune.progress import tick

        was_training, length = model.training, model.max_seq_length
        model.eval()
        if self.max_seq_length:
            model.max_seq_length = self.max_seq_length
        texts = len(self.vset["queries"]) + len(self.vset["corpus"])
        tick(self.progress, 0, phase=f"scoring step {steps} on {texts} validation texts")
        try:
            means = retrieval_scores(model, self.vset, self.metrics, precision=self.precision)
        finally:
            model.max_seq_length = length
            model.train(was_training)
            tick(self.progress, 0, phase="training")
        return self.prefix_name_to_metrics(means, self.name)


def interpolate(base_state: dict, tuned_state: dict, weight: float) -> dict:
    """(1 - weight) * base + weight * tuned, tensor by tensor (WiSE-FT); integer buffers from tuned."""
    out: dict[str, Any] = {}
    for name, t in tuned_state.items():
        b = base_state[name]
        out[name] = t if not t.is_floating_point() else (1.0 - weight) * b.to(t.dtype) + weight * t
    return out


def walk_order(weights: list[float], known: dict[float, dict], primary: str) -> tuple[list[float], bool]:
    """The mixing weights `choose_weight` scores, in order, and whether it walks: from the better
    of the two ends already scored (weight 0, the starting model, and weight 1, the kept
    checkpoint; ties to 1) inward, stopping where the score turns down. Without both ends
    known: every unknown weight, ascending, all scored."""
    scored = {w for w in weights if primary in known.get(w, {})}
    unknown = [w for w in weights if w not in scored]
    lo, hi = min(weights), max(weights)
    if lo == hi or not {lo, hi} <= scored:
        return unknown, False
    start = hi if known[hi][primary] >= known[lo][primary] else lo
    return sorted(unknown, key=lambda w: abs(w - start)), True


def choose_weight(base_path: str, tuned_path: str, out_path: str, vset: dict, weights: list[float],
                  metrics, primary: str, known: dict[float, dict] | None = None, threads: int | None = None,
                  max_seq_length: int | None = None, precision: str = "fp32", progress=None) -> dict:
    """Score mixing weights on the validation set; save the best mix to `out_path`.

    `known` holds scores already measured (the kept checkpoint's at weight 1, the starting
    model's at 0). The others are scored from the better end inward (`walk_order`), and the walk
    stops at the first weight that scores below the best so far: along the line from the base
    to the tuned weights the score rises to one peak and falls (WiSE-FT's curves), so a weight
    further in cannot win. Each one not scored is listed in `skipped`. Ties go to the weight
    nearer 1 (the tuned model).

    Returns:
        {"weight", "curve": [{"weight", <metrics>}...] (scored or known, ascending), "skipped",
        "primary"}.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    metrics = tuple(dict.fromkeys([primary, *metrics]))
    base = SentenceTransformer(base_path, device="cpu" if not torch.cuda.is_available() else None)
    tuned = SentenceTransformer(tuned_path, device=base.device)
    for m in (base, tuned):
        if max_seq_length:
            m.max_seq_length = max_seq_length
        m.eval()
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    tuned_state = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
    known = {w: s for w, s in (known or {}).items() if w in weights and all(m in s for m in metrics)}
    scores = {w: {m: known[w][m] for m in metrics} for w in known}
    order, walked = walk_order(weights, known, primary)
    skipped: list[float] = []
    for n, w in enumerate(order):
        model = base if w == 0.0 else tuned
        if 0.0 < w < 1.0:
            tuned.load_state_dict(interpolate(base_state, tuned_state, w))
        elif w == 1.0:
            tuned.load_state_dict(tuned_state)
        best = max((s[primary] for s in scores.values()), default=-np.inf)
        scores[w] = dict(retrieval_scores(model, vset, metrics, precision=precision, progress=progress))
        if walked and scores[w][primary] < best:
            skipped = sorted(order[n + 1:])
            break
    curve = [{"weight": w, **{m: round(float(v), 6) for m, v in scores[w].items()}} for w in sorted(scores)]
    best = max(curve, key=lambda c: (c[primary], c["weight"]))
    w = best["weight"]
    tuned.load_state_dict(tuned_state if w == 1.0 else interpolate(base_state, tuned_state, w))
    tuned.save(out_path)
    return {"weight": w, "curve": curve, "skipped": skipped, "primary": primary}
