"""Exact blockwise top-k: the merge on the driver and the Ray search, against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest

from vectune.topk import TopK, merge_topk, search_dataset


def brute_force(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ docs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def partial(q: list[int], ids: list[list[str]], scores: list[list[float]]) -> dict:
    return {"q": np.array(q), "ids": np.array(ids, dtype=object), "scores": np.array(scores, dtype=np.float32)}


def test_merge_keeps_the_best_k_across_partials():
    parts = [
        partial([0, 1], [["a", "b"], ["a", "b"]], [[0.9, 0.1], [0.2, 0.3]]),
        partial([0, 1], [["c", "d"], ["c", "d"]], [[0.5, 0.95], [0.8, 0.1]]),
    ]
    top = merge_topk(parts, nq=2, k=3)
    assert top.ids.tolist() == [["d", "a", "c"], ["c", "b", "a"]]
    np.testing.assert_allclose(top.scores, [[0.95, 0.9, 0.5], [0.8, 0.3, 0.2]], rtol=1e-6)


def test_merge_handles_a_query_repeated_in_one_partial():
    # Ray joins several batches' outputs into one block: query 0 appears twice
    part = partial([0, 1, 0, 1], [["a"], ["b"], ["c"], ["d"]], [[0.1], [0.7], [0.9], [0.2]])
    top = merge_topk([part], nq=2, k=2)
    assert top.ids.tolist() == [["c", "a"], ["b", "d"]]


def test_merge_accepts_ids_as_arrays_of_arrays():
    # how an Arrow list<string> column comes back in a numpy batch
    ids = np.empty(2, dtype=object)
    ids[0], ids[1] = np.array(["a", "b"], dtype=object), np.array(["c", "d"], dtype=object)
    top = merge_topk([{"q": np.array([0, 1]), "ids": ids, "scores": np.array([[1, 2], [4, 3]], np.float32)}], 2, 2)
    assert top.ids.tolist() == [["b", "a"], ["c", "d"]]


def test_fewer_docs_than_k_pads_and_the_run_skips_padding():
    top = merge_topk([partial([0], [["a", "b"]], [[0.3, 0.6]])], nq=1, k=4)
    assert top.ids.tolist() == [["b", "a", "", ""]]
    assert np.isneginf(top.scores[0, 2:]).all()
    assert top.run(["q"]) == {"q": {"b": pytest.approx(0.6), "a": pytest.approx(0.3)}}


def test_topk_run_format():
    top = TopK(ids=np.array([["x", "y"]], dtype=object), scores=np.array([[2.0, 1.0]], dtype=np.float32))
    assert top.run(["q1"]) == {"q1": {"x": 2.0, "y": 1.0}}


@pytest.mark.ray
@pytest.mark.parametrize(
    ("n_docs", "blocks", "block", "k"),
    [
        (103, 1, 7, 10),  # search batches smaller than k, several inside one Ray block
        (103, 5, 16, 10),  # uneven read blocks (103 / 5)
        (257, 3, 64, 100),  # k larger than every search batch
        (40, 2, 8192, 10),  # one batch for the whole corpus
        (6, 2, 4, 10),  # fewer documents than k: padded
    ],
)
def test_search_dataset_matches_brute_force(ray_local, n_docs, blocks, block, k):
    import ray

    rng = np.random.default_rng(n_docs)
    docs = rng.normal(size=(n_docs, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    ids = np.array([f"doc-{i}" for i in range(n_docs)])
    ds = ray.data.from_items([{"doc_id": str(ids[i]), "embedding": docs[i]} for i in range(n_docs)],
                             override_num_blocks=blocks)
    top = search_dataset(ds, queries, k, block=block)
    order, scores = brute_force(queries, docs, k)
    kk = min(k, n_docs)
    assert top.ids[:, :kk].tolist() == ids[order].tolist()
    np.testing.assert_allclose(top.scores[:, :kk], scores, rtol=1e-5, atol=1e-6)
    assert (top.ids[:, kk:] == "").all()
