"""BM25 beside the dense models: Qdrant Edge's own BM25 in a real throwaway shard, on corpora
small enough that the expected scores are worked out here from the BM25 formula."""

from __future__ import annotations

import json
import math

import pytest

from vectune.evaluate.bm25 import gains_over
from vectune.ranking import bm25_model
from vectune.ranking import bm25_rank as rank
from vectune.spec.bm25 import Bm25Spec

PLAIN = Bm25Spec(stopwords="none", stemmer="none")  # tokens are the words as written, lower-cased


def expected(settings: Bm25Spec, docs: dict[str, str], term: str) -> dict[str, float]:
    """Okapi BM25 of a one-term query, as Qdrant defines it: the IDF modifier's
    ln(1 + (N - n + 0.5) / (n + 0.5)) over the whole corpus, times the document's
    tf (k + 1) / (tf + k (1 - b + b dl / avg_len)); docs here are single spaces between words."""
    words = {d: t.lower().split() for d, t in docs.items()}
    n = sum(term in w for w in words.values())
    idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
    k, b, avg = settings.k, settings.b, settings.avg_len
    return {d: idf * w.count(term) * (k + 1) / (w.count(term) + k * (1 - b + b * len(w) / avg))
            for d, w in words.items() if term in w}


def batches(docs: dict[str, str], size: int):
    ids = list(docs)
    for i in range(0, len(ids), size):
        yield ids[i:i + size], [docs[d] for d in ids[i:i + size]]


DOCS = {"a": "alpha beta", "b": "alpha alpha gamma", "c": "delta", "d": "epsilon zeta eta",
        "e": "alpha theta iota kappa lambda"}


@pytest.mark.parametrize("settings", [PLAIN, PLAIN.model_copy(update={"k": 2.0, "b": 0.5, "avg_len": 3.0})],
                         ids=["defaults", "k2-b0.5-avg3"])
def test_scores_are_bm25_with_corpus_wide_idf_across_batches(settings):
    """Documents upserted two at a time still share one IDF (the engine's, over every point),
    and k, b and avg_len reach the document weights."""
    run = rank(batches(DOCS, 2), {"q": "alpha"}, settings, k=10)
    want = expected(settings, DOCS, "alpha")
    assert set(run["q"]) == {"a", "b", "e"}
    for doc, score in run["q"].items():
        assert score == pytest.approx(want[doc], rel=1e-5), doc
    assert list(run["q"]) == sorted(want, key=want.get, reverse=True)  # best first
    # the same corpus in one batch ranks and scores the same
    assert rank(batches(DOCS, 100), {"q": "alpha"}, settings, k=10)["q"] == pytest.approx(run["q"])


def test_depth_bounds_each_query_and_queries_are_independent():
    queries = {"q1": "alpha", "q2": "delta epsilon", "q3": "nothing matches"}
    run = rank(batches(DOCS, 3), queries, PLAIN, k=2)
    assert set(run) == set(queries)
    assert len(run["q1"]) == 2 and set(run["q1"]) <= {"a", "b", "e"}
    assert set(run["q2"]) == {"c", "d"}
    assert run["q3"] == {}  # no term the corpus has: nothing retrieved, never an error


def test_stemming_and_stopwords_follow_the_spec():
    docs = {"r": "the runner runs every morning", "s": "a cat sleeps"}
    english = Bm25Spec()  # Edge's defaults: English stopwords and Snowball stemming
    assert set(rank(batches(docs, 10), {"q": "running"}, english, k=10)["q"]) == {"r"}  # run ~ runs
    assert rank(batches(docs, 10), {"q": "running"}, PLAIN, k=10)["q"] == {}  # no stemmer: no match
    assert rank(batches(docs, 10), {"q": "the"}, english, k=10)["q"] == {}  # a stopword only
    assert set(rank(batches(docs, 10), {"q": "the"}, PLAIN, k=10)["q"]) == {"r"}


def test_the_defaults_are_edges_own():
    """`bm25:` left out gives exactly the vectors of `qdrant_edge.Bm25()` (Edge's defaults),
    what a Qdrant server's BM25 computes with its defaults too."""
    import qdrant_edge as qe

    ours, edge = bm25_model(Bm25Spec()), qe.Bm25()
    text = "Microstructural development of human newborn cerebral white matter, assessed in vivo by MRI."
    for a, b in ((ours.embed_document(text), edge.embed_document(text)), (ours.embed_query(text), edge.embed_query(text))):
        assert (a.indices, a.values) == (b.indices, b.values)
    config = qe.Bm25Config()
    spec = Bm25Spec()
    assert (spec.k, spec.b, spec.avg_len) == (config.k, config.b, config.avg_len)
    changed = bm25_model(Bm25Spec(k=2.0)).embed_document(text)
    assert changed.values != ours.embed_document(text).values


def test_every_language_and_tokenizer_the_spec_accepts_builds(tmp_path):
    from vectune.spec.bm25 import LANGUAGES, SNOWBALL

    for language in LANGUAGES:
        stemmer = "snowball" if language in SNOWBALL else "none"
        bm25_model(Bm25Spec(language=language, stemmer=stemmer)).embed_document("a few words")
    for tokenizer in ("word", "whitespace", "prefix", "multilingual", "code"):
        bm25_model(Bm25Spec(tokenizer=tokenizer)).embed_document("a few words")


def test_the_section_is_strict_and_located(tmp_path):
    from vectune.errors import SpecError
    from vectune.spec import load_spec
    from testdata import TINY_SPEC

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(TINY_SPEC.format(runs=tmp_path / "runs")
                         + "bm25: {language: chinese, b: 1.5, stopword: none}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec_path)
    problems = "\n".join(str(p) for p in info.value.problems)
    assert "bm25.b" in problems and "bm25.stopword" in problems
    spec_path.write_text(TINY_SPEC.format(runs=tmp_path / "runs") + "bm25: {language: chinese}\n")
    with pytest.raises(SpecError, match="stemmer: none"):
        load_spec(spec_path)
    spec_path.write_text(TINY_SPEC.format(runs=tmp_path / "runs") + "bm25: {language: chinese, stemmer: none}\n")
    assert load_spec(spec_path).bm25.language == "chinese"


def test_gains_over_bm25():
    bm25 = {"metrics": {"ndcg@10": 0.68, "recall@100": 0.92}}
    gains = gains_over({"base": {"metrics": {"ndcg@10": 0.645, "recall@100": 0.95, "mrr@10": 0.6}},
                        "tuned": {"metrics": {"ndcg@10": 0.73, "recall@100": 0.96}}}, bm25)
    assert gains["base"] == pytest.approx({"ndcg@10": -0.035, "recall@100": 0.03})  # mrr@10: BM25 lacks it
    assert gains["tuned"] == pytest.approx({"ndcg@10": 0.05, "recall@100": 0.04})


# -- the cache -------------------------------------------------------------------------
@pytest.fixture
def tiny(tiny_beir, monkeypatch):
    """The tiny BEIR folder, its corpus streamed from the file (not Ray Data), and a count of
    the BM25 rankings actually built."""
    from vectune.data import doc_text
    from vectune.evaluate import bm25

    def from_file(data, size=bm25.BATCH):
        docs = [json.loads(line) for line in tiny_beir.corpus_path.read_text().splitlines()]
        for i in range(0, len(docs), size):
            part = docs[i:i + size]
            yield [d["_id"] for d in part], [doc_text(d.get("title"), d.get("text")) for d in part]

    built = []
    real = bm25.bm25_rank
    monkeypatch.setattr(bm25, "corpus_batches", lambda data, size=2: from_file(data, size))
    monkeypatch.setattr(bm25, "bm25_rank", lambda *a, **kw: built.append(1) or real(*a, **kw))
    return tiny_beir, built


def test_scores_are_cached_by_data_settings_and_split(tiny):
    from vectune.data import DomainData
    from vectune.evaluate.scores import bm25_digest, bm25_scored

    sl, built = tiny
    spec = sl.load()
    first, cached = bm25_scored(spec, DomainData(spec), "test")
    assert not cached and len(built) == 1
    assert first.model == "bm25" and first.num_queries == 2 and first.fingerprint == f"bm25-{bm25_digest(spec, DomainData(spec))}"
    # the tiny corpus: each query's own document ranks first
    assert first.metrics["mrr@10"] == pytest.approx(1.0) and set(first.per_query) == {"q1", "q2"}
    files = list((sl.root.parent / "runs" / "_cache" / "scores").glob("bm25-test-*.json"))
    assert len(files) == 1

    again, cached = bm25_scored(spec, DomainData(spec), "test")
    assert cached and len(built) == 1  # nothing ranked again
    assert (again.metrics, again.per_query, again.fingerprint) == (first.metrics, first.per_query, first.fingerprint)

    # what does not change BM25's scores keeps the key; what does changes it
    same = spec.revalidated(spec.canonical() | {"evaluate": spec.canonical()["evaluate"] | {"batch_size": 7}})
    assert bm25_digest(same, DomainData(same)) == bm25_digest(spec, DomainData(spec))
    other = spec.revalidated(spec.canonical() | {"bm25": spec.canonical()["bm25"] | {"k": 0.9}})
    assert bm25_digest(other, DomainData(other)) != bm25_digest(spec, DomainData(spec))
    _, cached = bm25_scored(other, DomainData(other), "test")
    assert not cached and len(built) == 2
    # a corpus edited in place (same path) is a new key too
    sl.corpus_path.write_text(sl.corpus_path.read_text() + json.dumps({"_id": "d5", "text": "More aspirin."}) + "\n")
    assert bm25_digest(spec, DomainData(spec)) != first.fingerprint.removeprefix("bm25-")


def test_a_torn_cache_file_is_scored_again(tiny):
    from vectune.data import DomainData
    from vectune.evaluate.scores import bm25_scored

    sl, built = tiny
    spec = sl.load()
    bm25_scored(spec, DomainData(spec), "test")
    (path,) = (sl.root.parent / "runs" / "_cache" / "scores").glob("bm25-test-*.json")
    path.write_text(path.read_text()[:40])
    result, cached = bm25_scored(spec, DomainData(spec), "test")
    assert not cached and len(built) == 2 and result.metrics["mrr@10"] == pytest.approx(1.0)


def test_the_printed_table_shows_bm25_and_the_gain_over_it(tiny_beir):
    """`vectune evaluate` without --json: BM25's row beside the model's, then the gain line."""
    from vectune import _console as console
    from vectune.commands.evaluate import _show

    spec = tiny_beir.load()
    summary = {"split": "test", "num_queries": 2, "metrics": {"ndcg@10": 0.645, "recall@100": 0.95, "mrr@10": 0.6}}
    bm25 = {"split": "test", "num_queries": 2, "metrics": {"ndcg@10": 0.683, "recall@100": 0.9213, "mrr@10": 0.647}}
    result = {"run_id": "r", "run_dir": "/runs/r", "base": summary, "bm25": bm25,
              "over_bm25": gains_over({"base": summary}, bm25)}
    with console.out.capture() as captured:
        _show(spec, result)
    text = captured.get()
    rows = {line.split()[1]: line for line in text.splitlines() if line.split()[1:2] in (["base"], ["bm25"])}
    assert "0.6450" in rows["base"] and all(v in rows["bm25"] for v in ("0.6830", "0.9213", "0.6470"))
    assert "base over BM25: ndcg@10 -0.0380, recall@100 +0.0287, mrr@10 -0.0470" in text
