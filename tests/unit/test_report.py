"""The run report, rendered from a run folder written by vectune's own code.

The folder is made without Ray (cheap enough for the unit tier): the real model scores a
small SciFact slice in this process, and vectune writes the results the way the evaluate
and gate stages do (`Run.stage`, `save_evaluation`, `decide`, the mine audit's
`score_report`). The train stage is left out on purpose: the report must say "not run".
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from vectune.data import DomainData
from vectune.embed import Encoder, encoder_config
from vectune.evaluate import Evaluation, score_run
from vectune.ranking import bm25_rank as rank
from vectune.evaluate.gate import decide
from vectune.mine.audit import score_report
from vectune.pipeline import save_evaluation
from vectune.runs import base_model_path, record_lineage
from vectune.report import render_report, write_report
from vectune.runs import Run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _corpus(sl) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in sl.corpus_path.read_text().splitlines()]
    return [r["_id"] for r in rows], [f"{r.get('title') or ''} {r['text']}".strip() for r in rows]


class _Scorer:
    """The base model, loaded once; the corpus encoded once."""

    def __init__(self, spec, doc_texts: list[str]):
        path = base_model_path(spec)
        self.queries = Encoder(encoder_config(spec, path, role="query", cache=False))
        self.docs = self.queries.encode(doc_texts)  # no document prefix in the slice spec

    def __call__(self, texts: list[str], prefix: str = "") -> np.ndarray:
        return self.queries.encode([prefix + t for t in texts]) @ self.docs.T


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, make_slice):
    sl = make_slice(tmp_path_factory.mktemp("report"), n_docs=60, split=("train", "test"), n_queries=12,
                    spec={"model": {"max_seq_length": 32}})
    spec = sl.load()
    data = DomainData(spec)
    run = Run.create(spec, "r1")
    record_lineage(run, data)
    doc_ids, doc_texts = _corpus(sl)
    score = _Scorer(spec, doc_texts)
    labels = data.labels("test")
    qids = sorted(labels.qrels)
    # "tuned" is the base model given a query prefix: a different, real ranking
    for role, prefix in (("base", ""), ("tuned", "search query: ")):
        with run.stage(f"evaluate:{role}:test") as outputs:
            scores = score([labels.queries[q] for q in qids], prefix)
            ranking = {q: {doc_ids[j]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]}
                       for i, q in enumerate(qids)}
            means, per_query = score_run(labels.qrels, ranking, spec.evaluate.metrics)
            outputs.update(means)
        save_evaluation(run, role, Evaluation("test", role, "fp", means, len(qids), 0.1, per_query))
    # BM25 beside them, as the evaluate stage scores it: Qdrant Edge's, in a real throwaway shard
    with run.stage("evaluate:bm25:test") as outputs:
        ranking = rank([(doc_ids, doc_texts)], {q: labels.queries[q] for q in qids}, spec.bm25, spec.evaluate.depth)
        means, per_query = score_run(labels.qrels, ranking, spec.evaluate.metrics)
        outputs.update(means)
    save_evaluation(run, "bm25", Evaluation("test", "bm25", "bm25-fp", means, len(qids), 0.1, per_query))
    metrics = run.read_json("metrics.json")
    run.record("gate", {**decide(spec.evaluate.gate, metrics["base"]["test"]["metrics"],
                                 metrics["tuned"]["test"]["metrics"]).to_dict(), "split": "test"})
    # the mine audit's score block, from real scores of training queries' positives and
    # their best-scoring other documents
    train = data.labels("train")
    tq = sorted(train.qrels)
    scores = score([train.queries[q] for q in tq])
    pos, neg = [], []
    for i, q in enumerate(tq):
        positive = [j for j, d in enumerate(doc_ids) if d in train.qrels[q]]
        others = [j for j in np.argsort(-scores[i]) if doc_ids[j] not in train.qrels[q]][:3]
        pos += [float(scores[i, j]) for j in positive]
        neg += [float(scores[i, j]) for j in others]
    run.write_json("mine/mine_audit.json", {"queries_mined": len(tq), "triples_out": len(pos),
                                            "scores": score_report(pos, neg, [])})
    return run.dir


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_numbers_match_metrics_json(run_dir):
    page = render_report(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for role in ("base", "tuned"):
        values = metrics[role]["test"]["metrics"]
        cells = [f'<td class="num">{values[m]:.4f}</td>' for m in ("mrr@10", "ndcg@10", "recall@100")]
        assert f"<tr><th>{role}</th>{''.join(cells)}</tr>" in page, role
    gain = metrics["tuned"]["test"]["metrics"]["ndcg@10"] - metrics["base"]["test"]["metrics"]["ndcg@10"]
    assert f'<td class="num">{gain:.4f}</td>' in page
    # per-query: base and tuned nDCG@10 of the query that changed most are shown
    base = json.loads((run_dir / "per_query" / "base-test.json").read_text())
    tuned = json.loads((run_dir / "per_query" / "tuned-test.json").read_text())
    q = max(base, key=lambda q: abs(tuned[q]["ndcg@10"] - base[q]["ndcg@10"]))
    if tuned[q]["ndcg@10"] != base[q]["ndcg@10"]:
        assert (f'<td class="num">{base[q]["ndcg@10"]:.4f}</td>'
                f'<td class="num">{tuned[q]["ndcg@10"]:.4f}</td>') in page and f"<tr><th>{q}</th><td>" in page


def test_report_shows_bm25_beside_the_models_and_their_gains_over_it(run_dir):
    page = render_report(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = ("mrr@10", "ndcg@10", "recall@100")
    bm25 = metrics["bm25"]["test"]["metrics"]
    assert bm25["ndcg@10"] > 0  # a real ranking of the slice
    cells = "".join(f'<td class="num">{bm25[m]:.4f}</td>' for m in names)
    assert f"<tr><th>bm25</th>{cells}</tr>" in page
    for role in ("base", "tuned"):
        values = metrics[role]["test"]["metrics"]
        cells = "".join(f'<td class="num">{values[m] - bm25[m]:.4f}</td>' for m in names)
        assert f"<tr><th>{role} - bm25</th>{cells}</tr>" in page, role
    # the models first, the baseline after them, whatever order metrics.json holds them in
    assert page.index("<tr><th>base</th>") < page.index("<tr><th>tuned</th>") < page.index("<tr><th>bm25</th>")
    assert "the gate never decides on it" in page


def test_report_numbers_read_plainly():
    from vectune.report.html import _num

    assert _num(659.5, "seconds") == "659.5" and _num(1029.72, "seconds") == "1,029.7"
    assert _num(0.72031, "ndcg@10") == "0.7203" and _num(1234.5678) == "1,234.6" and _num(50.0, "steps") == "50"


def test_report_embeds_png_plots_and_nothing_external(run_dir):
    page = render_report(run_dir)
    images = _images(page)
    # metric bars, per-query scatter, score histogram, stage timings
    assert len(images) == 4
    assert all(img.startswith(PNG_MAGIC) and len(img) > 2000 for img in images)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_report_lineage_and_missing_stages(run_dir):
    page = render_report(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["spec_hash"] in page
    assert manifest["models"]["base"]["fingerprint"] in page
    for path, digest in manifest["data"].items():
        assert digest in page and path in page
    gate = manifest["gate"]
    assert ("gate <span class=\"pass\">passed" if gate["passed"] else "gate <span class=\"fail\">failed") in page
    for reason in gate["reasons"]:
        assert reason.replace(">", "&gt;") in page or reason in page
    assert "train stage: not run" in page and "re-index: not run" in page
    assert "max_seq_length: 32" in page  # the spec, as YAML


def test_write_report_default_path_and_cli(run_dir, tmp_path):
    from typer.testing import CliRunner

    from vectune.cli import app

    assert write_report(run_dir) == run_dir / "report.html"
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report"] == str(out)
    assert out.read_text() == (run_dir / "report.html").read_text()
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "not a vectune run folder" in bad.output


def test_report_shows_every_learning_rate_beside_the_starting_model(run_dir, tmp_path):
    """train/settings.json as the train stage writes it: each rate's curve in the plot and the
    table, why it stopped, the starting model's score and the verdict."""
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    settings = {"primary": "ndcg@10", "base": {"ndcg@10": 0.7391},
                "settings": [{"learning_rate": 5e-5, "steps_run": 50, "stopped": "ran its budget",
                              "curve": [{"step": 13, "ndcg@10": 0.7551}, {"step": 26, "ndcg@10": 0.7951}]},
                             {"learning_rate": 1.5e-5, "steps_run": 13,
                              "stopped": "stopped at step 13: behind an earlier learning rate there",
                              "curve": [{"step": 13, "ndcg@10": 0.7402}]}],
                "chosen": {"learning_rate": 5e-5, "step": 26, "weight": 0.75, "beats_base": True},
                "modes": {"base": {"dense": {"ndcg@10": 0.7237}, "hybrid/rrf": {"ndcg@10": 0.7893},
                                   "hybrid/dbsf": {"ndcg@10": 0.8086}},
                          "tuned": {"dense": {"ndcg@10": 0.7871}, "hybrid/rrf": {"ndcg@10": 0.8025},
                                    "hybrid/dbsf": {"ndcg@10": 0.8309}},
                          "bm25": {"ndcg@10": 0.7875}, "served": "hybrid/dbsf"}}
    (d / "train").mkdir(exist_ok=True)
    (d / "train" / "settings.json").write_text(json.dumps(settings))
    page = render_report(d)
    assert "start (before step 1)" in page and "0.7391" in page
    # every way to serve, the served one marked, BM25 alone beside
    assert "validation by serving mode" in page and "hybrid/dbsf (served)" in page and "hybrid/rrf" in page
    assert "0.8309" in page and "0.8025" in page and "BM25 alone 0.7875" in page
    assert page.count("lr 5e-05") >= 3 and "lr 1.5e-05" in page  # two rows of 5e-5 and the kept line
    assert "behind an earlier learning rate" in page and "beats the starting model" in page
    assert len(_images(page)) > len(_images(render_report(run_dir)))  # the validation plot joined
