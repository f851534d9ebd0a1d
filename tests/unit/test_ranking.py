"""Ranking in a throwaway Qdrant Edge shard (real engine): dense is exact cosine, BM25 is
Qdrant's with IDF over the documents held, hybrid is the engine's own fusion of the two."""

from __future__ import annotations

import numpy as np
import pytest

from vectune.ranking import ScratchShard, bm25_vectors
from vectune.spec.bm25 import Bm25Spec

DOCS = {
    "cat": "The cat sat on the mat near the door.",
    "dog": "Dogs chase cats around the garden every morning.",
    "quark": "Quantum chromodynamics describes how quarks bind into protons.",
    "mat": "A woven mat for a sleeping cat.",
    "tea": "Green tea contains catechins and caffeine.",
}


@pytest.fixture
def shard():
    rng = np.random.default_rng(3)
    dense = rng.normal(size=(len(DOCS), 16)).astype(np.float32)
    with ScratchShard(16, True) as s:
        ids = list(DOCS)
        s.add(ids[:2], dense[:2], bm25_vectors(Bm25Spec(), [DOCS[d] for d in ids[:2]]))  # in batches
        s.add(ids[2:], dense[2:], bm25_vectors(Bm25Spec(), [DOCS[d] for d in ids[2:]]))
        yield s, ids, dense


def test_dense_is_exact_cosine(shard):
    s, ids, dense = shard
    q = np.random.default_rng(4).normal(size=(3, 16)).astype(np.float32)
    got = s.query(5, "dense", dense=q)
    unit = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    expect = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ unit.T
    for row, scores in zip(got, expect):
        assert list(row) == [ids[j] for j in np.argsort(-scores)]
        assert np.allclose([row[ids[j]] for j in range(len(ids))], scores, atol=1e-5)


def test_bm25_ranks_by_terms_with_idf_over_the_documents_held(shard):
    s, ids, _ = shard
    (row,) = s.query(5, "bm25", sparse=bm25_vectors(Bm25Spec(), ["quarks and protons"], query=True))
    assert list(row) == ["quark"]  # no other document has either term
    (row,) = s.query(5, "bm25", sparse=bm25_vectors(Bm25Spec(), ["sleeping cat on a mat"], query=True))
    assert list(row)[:2] == ["mat", "cat"]  # `sleeping` is rare: it decides between the two
    assert "quark" not in row


@pytest.mark.parametrize("rrf_k", [2, 60])
def test_hybrid_is_qdrants_reciprocal_rank_fusion_of_both_lists(shard, rrf_k):
    s, ids, _ = shard
    q_dense = np.random.default_rng(5).normal(size=(1, 16)).astype(np.float32)
    q_sparse = bm25_vectors(Bm25Spec(), ["cat on a mat"], query=True)
    (dense,) = s.query(5, "dense", dense=q_dense)
    (sparse,) = s.query(5, "bm25", sparse=q_sparse)
    (fused,) = s.query(5, "hybrid", dense=q_dense, sparse=q_sparse, rrf_k=rrf_k)
    expect = {d: sum(1.0 / (rrf_k + list(r).index(d)) for r in (dense, sparse) if d in r) for d in ids}
    assert set(fused) == set(ids)
    for d, score in fused.items():
        assert score == pytest.approx(expect[d], rel=1e-5)
    assert list(fused) == sorted(fused, key=lambda d: -fused[d])


def test_dbsf_fuses_normalised_scores(shard):
    """Distribution-based score fusion: each list's scores normalised to about [0, 1] and
    summed, so a document first in both lists scores near 2 (RRF's best is 2 / rrf_k)."""
    s, ids, dense = shard
    q_dense = dense[[1]]  # the `dog` document's own vector: first in the dense list
    q_sparse = bm25_vectors(Bm25Spec(), ["dogs chase"], query=True)  # only `dog` has these terms
    (fused,) = s.query(5, "hybrid", dense=q_dense, sparse=q_sparse, fusion="dbsf")
    assert list(fused)[0] == "dog" and 1.0 < fused["dog"] <= 2.0 + 1e-6
    assert set(fused) == set(ids)


def test_a_mode_without_its_vectors_is_refused():
    with ScratchShard(4, False) as s:
        s.add(["a"], np.ones((1, 4), np.float32))
        with pytest.raises(ValueError, match="needs the vectors"):
            s.query(1, "hybrid", dense=np.ones((1, 4), np.float32), sparse=[([1], [1.0])])


@pytest.mark.parametrize("fusion", ["rrf", "dbsf"])
def test_fuse_of_the_two_lists_is_the_engines_hybrid(fusion):
    """`fuse` (qdrant-client's fusion, for lists that come from elsewhere: the mine's exact dense
    search and a BM25 ranking) orders and scores exactly as the engine's hybrid query fuses its
    two prefetches, for both fusions."""
    from vectune.ranking import fuse

    rng = np.random.default_rng(11)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(4, 12)))) for _ in range(60)]
    ids = [f"d{i}" for i in range(60)]
    dense = rng.normal(size=(60, 16)).astype(np.float32)
    settings = Bm25Spec()
    q_dense = rng.normal(size=(5, 16)).astype(np.float32)
    q_sparse = bm25_vectors(settings, [" ".join(rng.choice(words, size=3)) for _ in range(5)], query=True)
    with ScratchShard(16, True) as s:
        s.add(ids, dense, bm25_vectors(settings, texts))
        side_dense = s.query(20, "dense", dense=q_dense)
        side_bm25 = s.query(20, "bm25", sparse=q_sparse)
        served = s.query(15, "hybrid", dense=q_dense, sparse=q_sparse, fusion=fusion, rrf_k=7, prefetch=20)
    for d_hits, b_hits, engine in zip(side_dense, side_bm25, served):
        ours = fuse([list(d_hits.items()), list(b_hits.items())], fusion, limit=15, rrf_k=7)
        assert len(ours) == len(engine) == 15
        assert [score for _, score in ours] == pytest.approx(list(engine.values()), rel=1e-4)
        # the same order wherever the scores are not tied
        for (doc, score), (edoc, escore) in zip(ours, engine.items()):
            assert doc == edoc or score == pytest.approx(escore, rel=1e-6)


def test_fuse_refuses_an_unknown_fusion():
    from vectune.ranking import fuse

    with pytest.raises(ValueError, match="unknown fusion"):
        fuse([[("a", 1.0)]], "mean", limit=1)
