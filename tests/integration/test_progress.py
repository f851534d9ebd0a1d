"""Progress of work done in Ray workers: real encoder actors tick a real counter actor.

The driver side is checked in its log mode (stderr is not a terminal under pytest): a line
with the count, the total and the rate comes out while the work runs.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def sliced(tmp_path_factory, make_slice, ray_local, random_model):
    """On a random-weight model: these tests compare ticks and vectors between code paths, not
    what the model ranks (CI time)."""
    return make_slice(tmp_path_factory.mktemp("progress"), n_docs=150, n_queries=5,
                      spec={"model": {"max_seq_length": 64, "base": random_model}})


def test_encoder_actors_tick_every_document_once(sliced):
    import ray

    from vectune.data import DomainData
    from vectune.embed import embed_dataset, encoder_config, plan_actors
    from vectune.runs import base_model_path
    from vectune.progress import track

    spec = sliced.load()
    data = DomainData(spec)
    cfg = encoder_config(spec, base_model_path(spec), role="document", cache=False)
    with track("encode", data.corpus.count) as counter:
        rows = embed_dataset(data.corpus_dataset(blocks=2), cfg, plan_actors(None), batch_size=100,
                             progress=counter).take_all()
        done, _ = ray.get(counter.read.remote())
    assert len(rows) == data.corpus.count == 150
    assert done == 150  # 100 + 50: the first batch in chunks of whole model batches


def test_chunked_encode_matches_one_call(sliced):
    """Encoding in length-sorted chunks (for the ticks) gives the vectors one `encode` call does."""
    from vectune.embed import encoder_config
    from vectune.embed.encoder import Encoder
    from vectune.runs import base_model_path
    from vectune.progress import track

    spec = sliced.load()
    texts = [t for t in _texts(sliced)][:300]
    cfg = encoder_config(spec, base_model_path(spec), role="document", cache=False)
    plain = Encoder(cfg).encode(texts)
    with track("encode", len(texts)) as counter:
        chunked = Encoder(cfg, progress=counter).encode(texts)
    assert chunked.shape == plain.shape
    np.testing.assert_allclose(chunked, plain, atol=2e-5)


def test_validation_scoring_ticks_every_text_and_scores_as_one_call(sliced):
    """Checkpoint scoring and the mixing weight encode the validation texts in length-sorted
    chunks to tick a counter (vectune.embed.encoder.encode_sorted): the same vectors, so the
    same scores, as one `encode` call, and every text ticked once."""
    from sentence_transformers import SentenceTransformer

    from vectune import progress
    from vectune.runs import base_model_path
    from vectune.train.validation import _vectors, retrieval_scores

    spec = sliced.load()
    model = SentenceTransformer(base_model_path(spec), device="cpu")
    model.max_seq_length = 64
    texts = _texts(sliced)[:140]
    vset = {"queries": {f"q{i}": t[:60] for i, t in enumerate(texts[:10])},
            "corpus": {f"d{i}": t for i, t in enumerate(texts)},
            "qrels": {f"q{i}": {f"d{i}": 1} for i in range(10)}}
    counter = progress.Counter()
    ticked = _vectors(model, texts, 16, "fp32", counter)
    plain = model.encode(texts, batch_size=16, normalize_embeddings=True)  # one call, no vectune code
    np.testing.assert_allclose(ticked, plain, atol=2e-5)
    np.testing.assert_allclose(_vectors(model, texts, 16, "fp32"), plain, atol=2e-5)
    assert counter.read()[0] == len(texts)
    counter = progress.Counter()
    with_counter = retrieval_scores(model, vset, ["ndcg@10"], batch_size=16, progress=counter)
    assert with_counter == pytest.approx(retrieval_scores(model, vset, ["ndcg@10"], batch_size=16), abs=1e-6)
    assert counter.read()[0] == 10 + 140


def test_log_mode_reports_count_total_rate_and_time_left_from_a_worker(monkeypatch, caplog, ray_local):
    """A Ray task that warms up, then steps: lines while it warms up, then count, total, rate
    and the time left at the steps' own pace (not counting the warm-up)."""
    import ray

    from vectune import progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.2)
    monkeypatch.setattr(progress, "POLL_EVERY", 0.05)

    @ray.remote(num_cpus=0)
    def work(counter):
        time.sleep(1.0)  # warm-up: nothing done
        for step in range(1, 11):
            time.sleep(0.1)
            progress.tick_to(counter, step, loss=0.25)

    with caplog.at_level(logging.INFO, logger="vectune"):
        with progress.track("train", 10, unit="steps") as counter:
            ray.get(work.remote(counter))
            ray.get(counter.read.remote())
            time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")]
    assert any("0/10 steps, starting" in line for line in lines), lines
    assert "10/10 steps (100%)" in lines[-1] and "steps/s" in lines[-1] and "loss 0.25" in lines[-1]


def _texts(sliced) -> list[str]:
    import json

    return [(lambda d: f"{d['title']} {d['text']}")(json.loads(line))
            for line in sliced.corpus_path.read_text(encoding="utf-8").splitlines()]


def test_a_small_corpus_is_encoded_in_the_driver_with_the_pools_columns_and_vectors(sliced):
    """Below runtime.driver_encode_max on one machine, the corpus is encoded in this process
    (one model load, shared with the other encoders of the same model here); the rows, kept
    columns and vectors are the actor pool's, and the progress counter ticks every document."""
    import ray

    from vectune.data import DomainData
    from vectune.embed import encoder_config, plan_actors
    from vectune.embed.dataset import embed_dataset, embed_here, in_driver
    from vectune.embed.encoder import Encoder
    from vectune.progress import track
    from vectune.runs import base_model_path

    spec = sliced.load()
    data = DomainData(spec)
    plan = plan_actors(None)
    assert in_driver(spec.runtime.driver_encode_max, data.corpus.count, plan)  # 150 <= 1,000, one node
    assert not in_driver(0, data.corpus.count, plan) and not in_driver(149, data.corpus.count, plan)
    cfg = encoder_config(spec, base_model_path(spec), role="document", cache=False)
    with track("encode", data.corpus.count) as counter:
        here = embed_here(data.corpus_dataset(blocks=3), cfg, keep=("doc_id", "title"), progress=counter).take_all()
        done, _ = ray.get(counter.read.remote())
    pooled = embed_dataset(data.corpus_dataset(blocks=2), cfg, plan, batch_size=100, keep=("doc_id", "title")).take_all()
    assert done == len(here) == len(pooled) == 150
    assert set(here[0]) == set(pooled[0]) == {"doc_id", "title", "embedding"}
    by_id = {r["doc_id"]: r for r in pooled}
    for row in here:
        assert row["title"] == by_id[row["doc_id"]]["title"]
        np.testing.assert_allclose(row["embedding"], by_id[row["doc_id"]]["embedding"], atol=2e-5)
    a, b = Encoder(cfg), Encoder(cfg)
    assert a.model is b.model  # one load per process for the same model and settings
