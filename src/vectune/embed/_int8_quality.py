"""Measuring an int8 variant against fp32: nDCG@10 of both on labelled queries, cosine of their vectors.

The primitives `vectune.embed.int8` runs when it builds a variant (`build_checks`: below it,
so the build does not import what finds variants) and `vectune.embed.int8_check` runs on a
caller's labelled sample.
"""

from __future__ import annotations

import dataclasses
import os
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


def _encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    return np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False), dtype=np.float32)


def measure(models, queries: dict[str, str], documents: dict[str, str], qrels: dict[str, dict[str, int]], *,
             tolerance: float, sample: str, variant: str, query_prefix: str = "", document_prefix: str = "",
             vectors: dict | None = None) -> Int8Verdict:
    """nDCG@10 of `models` (fp32, int8) on the sample, as a verdict; with `vectors`, their
    (query, document) vectors by name too."""
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


def _fp32_and_int8(model_path: str, graph: Path, threads: int | None):
    """The model in fp32 and the same model running the int8 graph (both on the CPU)."""
    from sentence_transformers import SentenceTransformer

    from vectune.embed._int8_session import attach

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never the hub
    fp32 = SentenceTransformer(model_path, device="cpu")
    quantized = attach(SentenceTransformer(model_path, device="cpu"), graph, threads)
    return fp32, quantized


def build_checks(model_path: str, graph: Path, variant: str, *, tolerance: float = 0.005,
                 threads: int | None = None) -> dict:
    """What `vectune.embed.int8` records when it builds a variant: the cosine of its vectors to
    fp32's on the packaged check sample's texts, and the nDCG@10 verdict on that sample."""
    from vectune.embed._check_sample import check_sample

    queries, documents, qrels = check_sample()
    vectors: dict = {}
    verdict = measure(_fp32_and_int8(model_path, graph, threads), queries, documents, qrels, tolerance=tolerance,
                       sample="packaged check questions (vectune.embed._check_sample)", variant=variant,
                       vectors=vectors)
    a = np.concatenate(vectors["fp32"])
    b = np.concatenate(vectors["int8"])
    cosine = (a * b).sum(axis=1)
    quality = {"sample": "the packaged check sample's questions and passages", "texts": len(cosine),
               "cosine_mean": round(float(cosine.mean()), 6), "cosine_min": round(float(cosine.min()), 6)}
    return {"quality": quality, "checks": [verdict.to_dict()]}


