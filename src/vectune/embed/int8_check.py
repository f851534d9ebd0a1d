"""Is a model's int8 variant good enough? Its ranking against fp32's, on the caller's labelled queries.

Two checks, both recorded in the variant's `vectune_int8.json`:

- when the variant is built (`vectune.embed._int8_quality.build_checks`): cosine of its
  vectors to fp32's, and nDCG@10 of both on a small packaged retrieval sample
  (`vectune.embed._check_sample`, independent of the calibration texts): a broken variant is
  caught before anything is encoded with it;
- `check_int8(model, queries, documents, qrels, tolerance=...)`: nDCG@10 of fp32 and int8 on
  the caller's labelled sample, e.g. a run's validation queries, with a verdict against
  `model.int8_tolerance`. Where it fails, the caller encodes that model in fp32 and records
  why through the precision resolver (`vectune.precision.int8_fallback`).
"""

from __future__ import annotations

from vectune.embed._int8_quality import AT, Int8Verdict, measure, ndcg

__all__ = ["AT", "Int8Verdict", "check_int8", "ndcg"]


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
    from vectune.embed.models import load_model, model_fingerprint

    fingerprint = fingerprint or model_fingerprint(model_path)
    found = int8.variant(model_path, fingerprint)
    models = [load_model(model_path, max_seq_length=max_seq_length, device="cpu", threads=threads, precision=p,
                         fingerprint=fingerprint) for p in ("fp32", "int8")]
    verdict = measure(models, queries, documents, qrels, tolerance=tolerance, sample=sample,
                       variant=found.meta.get("tag", int8.tag()), query_prefix=query_prefix,
                       document_prefix=document_prefix)
    if record:
        int8.record_check(found.folder, verdict.to_dict())
    return verdict
