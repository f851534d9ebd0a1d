"""Is a model's int8 variant good enough? Its vectors and its ranking against fp32's, measured.

Two checks, both recorded in the variant's `vectune_int8.json`:

- when the variant is built (`build_checks`): cosine of its vectors to fp32's, and nDCG@10 of
  both on a small packaged retrieval sample (`vectune.embed._check_sample`, independent of the
  calibration texts): a broken variant is caught before anything is encoded with it;
- `check_int8(model, queries, documents, qrels, tolerance=...)`: nDCG@10 of fp32 and int8 on
  the caller's labelled sample, e.g. a run's validation queries, with a verdict against
  `model.int8_tolerance`. Where it fails, the caller encodes that model in fp32 and records
  why through the precision resolver (`vectune.precision.int8_fallback`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

#: nDCG cut-off of the check (the metric the goal and the gate use)
AT = 10


@dataclasses.dataclass(frozen=True)
class Int8Verdict:
    """nDCG@10 of a model in fp32 and through its int8 variant on one labelled sample."""

    sample: str
    queries: int
    documents: int
    ndcg_fp32: float
    ndcg_int8: float
    tolerance: float
    variant: str  # the variant's tag (r4-<key>)
    seconds: float = 0.0

    @property
    def drop(self) -> float:
        return round(self.ndcg_fp32 - self.ndcg_int8, 6)

    @property
    def ok(self) -> bool:
        return self.drop <= self.tolerance

    @property
    def reason(self) -> str:
        verdict = "within" if self.ok else "more than"
        return (f"int8 ({self.variant}) nDCG@{AT} {self.ndcg_int8:.4f} vs fp32 {self.ndcg_fp32:.4f} on {self.queries} "
                f"{self.sample}: {self.drop:+.4f} lower, {verdict} model.int8_tolerance {self.tolerance:g}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "drop": self.drop, "ok": self.ok,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def ndcg(query_vectors: np.ndarray, doc_vectors: np.ndarray, query_ids: list[str], doc_ids: list[str],
         qrels: dict[str, dict[str, int]], at: int = AT) -> float:
    """Mean nDCG@`at` (pytrec_eval, as the evaluate stage scores) of dot-product rankings."""
    import pytrec_eval

    scores = query_vectors @ doc_vectors.T
    depth = min(max(at, 100), len(doc_ids))
    run = {}
    for i, qid in enumerate(query_ids):
        top = np.argpartition(-scores[i], depth - 1)[:depth]
        run[qid] = {doc_ids[j]: float(scores[i, j]) for j in top}
    judged = {q: {d: int(r) for d, r in rel.items()} for q, rel in qrels.items() if q in run}
    per_query = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut.{at}"}).evaluate(run)
    return float(np.mean([v[f"ndcg_cut_{at}"] for v in per_query.values()])) if per_query else 0.0


def _models(model_path: str, graph: Path, *, max_seq_length: int | None, threads: int | None):
    """(fp32 model, the same model running the int8 graph)."""
    from vectune.embed import int8
    from vectune.embed.models import load_model

    fp32 = load_model(model_path, max_seq_length=max_seq_length, device="cpu", threads=threads)
    quantized = load_model(model_path, max_seq_length=max_seq_length, device="cpu", threads=threads)
    int8.attach(quantized, graph, threads)
    return fp32, quantized


def _encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    return np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False), dtype=np.float32)


def _verdict(models, queries: dict[str, str], documents: dict[str, str], qrels: dict[str, dict[str, int]], *,
             tolerance: float, sample: str, variant: str, query_prefix: str = "", document_prefix: str = "",
             vectors: dict | None = None) -> Int8Verdict:
    started = time.perf_counter()
    qids = [q for q in queries if qrels.get(q)]
    dids = list(documents)
    figures = {}
    for name, model in zip(("fp32", "int8"), models):
        q = _encode(model, [query_prefix + queries[i] for i in qids])
        d = _encode(model, [document_prefix + documents[i] for i in dids])
        if vectors is not None:
            vectors[name] = (q, d)
        figures[name] = ndcg(q, d, qids, dids, qrels)
    return Int8Verdict(sample=sample, queries=len(qids), documents=len(dids), ndcg_fp32=round(figures["fp32"], 6),
                       ndcg_int8=round(figures["int8"], 6), tolerance=tolerance, variant=variant,
                       seconds=round(time.perf_counter() - started, 1))


def build_checks(model_path: str, graph: Path, *, tolerance: float = 0.005, threads: int | None = None) -> dict:
    """What `vectune.embed.int8` records when it builds a variant: the cosine of its vectors to
    fp32's on the packaged check sample's texts, and the nDCG@10 verdict on that sample."""
    from vectune.embed import int8
    from vectune.embed._check_sample import check_sample

    queries, documents, qrels = check_sample()
    vectors: dict = {}
    verdict = _verdict(_models(model_path, graph, max_seq_length=None, threads=threads), queries, documents, qrels,
                       tolerance=tolerance, sample="packaged check questions (vectune.embed._check_sample)",
                       variant=int8.tag(), vectors=vectors)
    a = np.concatenate(vectors["fp32"])
    b = np.concatenate(vectors["int8"])
    cosine = (a * b).sum(axis=1)
    quality = {"sample": "the packaged check sample's questions and passages", "texts": len(cosine),
               "cosine_mean": round(float(cosine.mean()), 6), "cosine_min": round(float(cosine.min()), 6)}
    return {"quality": quality, "checks": [verdict.to_dict()]}


def check_int8(model_path: str, queries: dict[str, str], documents: dict[str, str], qrels: dict[str, dict[str, int]],
               *, tolerance: float = 0.005, fingerprint: str | None = None, max_seq_length: int | None = None,
               query_prefix: str = "", document_prefix: str = "", threads: int | None = None,
               sample: str = "validation queries", record: bool = True) -> Int8Verdict:
    """nDCG@10 of `model_path` in fp32 and through its int8 variant (built now if missing) on a
    labelled sample, and whether int8 stays within `tolerance` of fp32.

    Args:
        model_path: a local model folder.
        queries, documents: texts by id (documents: the sample's corpus, e.g. a slice holding
            every document the queries' labels name).
        qrels: relevance by query id, then document id (queries without labels are skipped).
        tolerance: the largest drop of nDCG@10 accepted (`model.int8_tolerance`).
        max_seq_length, query_prefix, document_prefix: as the spec's model section says.
        record: append the verdict to the variant's metadata.

    Returns:
        The verdict; `verdict.ok` False means: encode this model in fp32
        (`vectune.precision.int8_fallback(spec, verdict)`).
    """
    from vectune.embed import int8
    from vectune.embed.models import model_fingerprint

    found = int8.variant(model_path, fingerprint or model_fingerprint(model_path))
    models = _models(model_path, found.graph, max_seq_length=max_seq_length, threads=threads)
    verdict = _verdict(models, queries, documents, qrels, tolerance=tolerance, sample=sample,
                       variant=found.meta.get("tag", int8.tag()), query_prefix=query_prefix,
                       document_prefix=document_prefix)
    if record:
        int8.record_check(found.folder, verdict.to_dict())
    return verdict
