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
def sliced(tmp_path_factory, make_slice, ray_local):
    return make_slice(tmp_path_factory.mktemp("progress"), n_docs=150, n_queries=5,
                      spec={"model": {"max_seq_length": 64}})


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


def test_log_mode_reports_count_total_and_rate(monkeypatch, caplog):
    import ray

    from vectune import progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.2)
    monkeypatch.setattr(progress, "POLL_EVERY", 0.05)
    with caplog.at_level(logging.INFO, logger="vectune"):
        with progress.track("train", 10, unit="steps") as counter:
            progress.tick_to(counter, 4, loss=0.25)
            ray.get(counter.read.remote())  # the tick has landed
            time.sleep(0.6)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")]
    assert lines, caplog.text
    assert "4/10 steps (40%)" in lines[-1] and "steps/s" in lines[-1] and "loss 0.25" in lines[-1]


def _texts(sliced) -> list[str]:
    import json

    return [(lambda d: f"{d['title']} {d['text']}")(json.loads(line))
            for line in sliced.corpus_path.read_text(encoding="utf-8").splitlines()]
