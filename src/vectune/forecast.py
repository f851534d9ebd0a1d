"""What `vectune run` is about to do, and about how long each stage takes on this machine.

Printed at the start of a run, so a user sees at once what the next half hour holds. The
sizes come from the spec and the data (documents, labelled pairs, steps from the budget);
the times from a measured first batch: the base model encodes a few of the corpus's own
documents and queries here, in the precision the run resolved, and runs one forward and
backward pass over a few documents in the training precision. Everything else is that
pace times the work:

- mine: every document and training query encoded once (less when the embedding cache
  holds them from an earlier run);
- train: each step's sequences (queries, positives, negatives) forward and backward, plus
  scoring each checkpoint and the mixing weights on the validation texts;
- evaluate: the tuned model encodes the corpus (the base model's vectors are the mining's,
  cached);
- re-index: the evaluation's cached vectors are written (no encoding).

A forecast never fails a run: anything it cannot measure is left out and said so.
"""

from __future__ import annotations

import logging
import math
import os
import time

log = logging.getLogger("vectune")

#: documents and training queries encoded to measure the pace (after one warm-up batch)
SAMPLE = 32
#: documents in the measured forward and backward pass, after a warm-up pass of the same
#: shape (oneDNN builds kernels per shape). SciFact on a 2-core AVX-512 AMX CPU, bf16: 8
#: documents after a 2-document warm-up forecast 52 min of training where 11.2 min ran; 12
#: after a same-shape warm-up forecast 9.6 min. A few seconds on 2 AVX2 cores in fp32.
TRAIN_SAMPLE = 12


def _seconds(text: float | None) -> str:
    if text is None:
        return "?"
    s = int(round(text))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _texts(spec, data, labels) -> tuple[list[str], list[str]]:
    from vectune.data._files import read_records
    from vectune.data.corpus import doc_text

    source = spec.data.corpus
    docs: list[str] = []
    parquet = source.format == "parquet"
    fields = [source.id_field, source.text_field] + ([source.title_field] if source.title_field else [])
    for _, record in read_records(data.corpus_path, parquet=parquet, columns=fields if parquet else None):
        docs.append(doc_text(record.get(source.title_field) if source.title_field else None,
                             record.get(source.text_field)))
        if len(docs) >= SAMPLE + 8:
            break
    queries = [labels.queries[q] for q in list(labels.qrels)[:SAMPLE]] if labels is not None else []
    return docs, queries


def _pace(spec, model_path: str, docs: list[str], queries: list[str]) -> dict:
    """Seconds per document and per query encoded, and per document forward + backward, as
    the stages run them: the corpus by encoder actors (`fit_actors`: on a few CPUs one actor a
    CPU, one torch thread each, texts sorted by length), training with the worker's threads."""
    import math

    import torch

    from vectune.embed.actors import fit_actors
    from vectune.embed.encoder import autocast
    from vectune.embed.models import load_for_training, load_model

    m, t = spec.model, spec.train
    encode_precision = m.precision if m.precision in ("fp32", "bf16", "fp16") else "fp32"
    try:
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else float(os.cpu_count() or 1)
    except Exception:  # noqa: BLE001 - a forecast never fails the run
        cpus = float(os.cpu_count() or 1)
    plan = fit_actors(cpus, 0.0, spec.mine.concurrency)
    model = load_model(model_path, max_seq_length=m.max_seq_length, threads=plan.threads,
                       precision="fp16" if encode_precision == "fp16" else "fp32")
    device = model.device.type
    sample = sorted(docs[:SAMPLE], key=len)  # the actors encode length-sorted batches
    with autocast(encode_precision, device), torch.inference_mode():
        model.encode(docs[SAMPLE:SAMPLE + 8], batch_size=8, show_progress_bar=False)  # warm-up: first-call costs are not pace
        started = time.perf_counter()
        model.encode(sample, batch_size=m.batch_size, show_progress_bar=False)
        per_doc = (time.perf_counter() - started) / max(1, len(sample))
        started = time.perf_counter()
        if queries:
            model.encode(queries, batch_size=m.batch_size, show_progress_bar=False)
        per_query = (time.perf_counter() - started) / len(queries) if queries else per_doc
    per_doc, per_query = per_doc / plan.actors, per_query / plan.actors  # actors encode side by side
    threads = spec.runtime.torch_threads or max(1, int(math.ceil(t.cpus_per_worker)))
    torch.set_num_threads(threads)
    train_model = load_for_training(model_path, attention_dropout=t.attention_dropout)  # as the workers train it
    if t.max_seq_length or m.max_seq_length:
        train_model.max_seq_length = t.max_seq_length or m.max_seq_length
    train_model.train()
    def step(texts: list[str]) -> float:
        features = train_model.preprocess(texts)
        features = {k: v.to(train_model.device) if hasattr(v, "to") else v for k, v in features.items()}
        with autocast(t.precision, device):
            started = time.perf_counter()
            out = train_model(features)["sentence_embedding"]
            out.float().pow(2).sum().backward()
        train_model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    # warm-up on other documents of the same batch shape: oneDNN builds its kernels per shape
    step(docs[SAMPLE - TRAIN_SAMPLE:SAMPLE] if len(docs) >= SAMPLE else docs[:TRAIN_SAMPLE])
    per_train_doc = step(docs[:TRAIN_SAMPLE]) / len(docs[:TRAIN_SAMPLE])
    return {"doc": per_doc, "query": per_query, "train_doc": per_train_doc, "encode_precision": encode_precision,
            "int8": m.precision == "int8"}


def forecast(spec, data, stages: list[str], model_path: str) -> dict:
    """The plan of a run (`stages`): sizes per stage and estimated seconds, from a measured pace."""
    from vectune.mine.stage import select_pairs, training_labels

    t = spec.train
    n_docs = data.corpus.count
    labels = pairs = None
    if {"mine", "train"} & set(stages):
        try:
            labels = training_labels(spec, data)
            pairs = select_pairs(spec, labels)
        except Exception as exc:  # noqa: BLE001 - the stage itself reports bad labels
            log.info("plan: training labels not counted (%s)", exc)
    split = spec.evaluate.split
    test_queries = len(data.labels(split).qrels) if split in data.split_names() else 0
    out: dict = {"documents": n_docs, "stages": {}}
    import torch

    threads = torch.get_num_threads()  # loading models sets them: the driver keeps its own
    try:
        docs, queries = _texts(spec, data, labels)
        log.info("plan: measuring this machine's pace on %d documents and %d queries ...", SAMPLE, len(queries))
        pace = _pace(spec, model_path, docs, queries)
    except Exception as exc:  # noqa: BLE001 - a forecast never fails the run
        log.info("plan: pace not measured (%s: %s)", type(exc).__name__, exc)
        pace = None
    finally:
        torch.set_num_threads(threads)
    out["pace"] = pace

    def est(seconds: float) -> float | None:
        return seconds if pace else None

    d, q, tr = (pace["doc"], pace["query"], pace["train_doc"]) if pace else (0.0, 0.0, 0.0)
    n_queries = len({qid for qid, _ in pairs}) if pairs else 0
    if "mine" in stages and pairs is not None:
        out["stages"]["mine"] = {"size": f"{n_docs} documents, {n_queries} queries, {len(pairs)} pairs",
                                 "seconds": est(n_docs * d + n_queries * q)}
    if "train" in stages and pairs is not None:
        held = t.held_out(n_queries) if t.validation_queries else 0
        rows = max(0, len(pairs) - round(len(pairs) * held / max(n_queries, 1)))
        steps = math.ceil(t.epochs * rows / t.batch_size)
        steps = min(steps, t.max_steps) if t.max_steps else steps
        negatives = t.negatives if t.negatives is not None else spec.mine.num_negatives
        # a step: each row's query (at the query pace's share of a document) and its documents
        step = t.batch_size * ((1 + negatives) * tr + tr * (q / d if d else 1.0))
        val_texts = (min(t.validation_docs, n_docs) + held) if held else 0
        rates = len(t.settings()) if held else 1
        # the first learning rate runs its budget; a later one runs at least to its first
        # checkpoint and at most the whole budget: half of it is the estimate
        runs = 1 + 0.5 * (rates - 1)
        # the starting model before step 1 (its documents read from the mine's vectors where
        # validation shares the embedding cache), each checkpoint and the mixing weights not yet
        # scored; the served modes compared at the end read the vectors scored already
        from vectune.train.stage import shared_cache

        try:
            start = 0 if shared_cache(spec, model_path) else 1
        except Exception:  # noqa: BLE001 - a forecast never fails the run
            start = 1
        # mixing weights: scored from the better end inward until the score turns down (at
        # least one of them; half of the rest is the estimate)
        inner = max(0, len(t.interpolation) - 2)
        scoring = val_texts * d * (start + runs * t.checkpoints + (1 + 0.5 * (inner - 1) if inner else 0))
        out["stages"]["train"] = {
            "size": f"{steps} steps of {t.batch_size} rows ({negatives} hard negatives)"
                    + (f" for each of {rates} learning rates (later ones stop early when behind)" if rates > 1 else "")
                    + f", {held} validation queries x {min(t.validation_docs, n_docs)} documents",
            "seconds": est(runs * steps * step + scoring), "steps": steps}
    if "evaluate" in stages:
        out["stages"]["evaluate"] = {"size": f"{test_queries} queries of split {split!r} over {n_docs} documents, "
                                             "base (cached from mining) and tuned",
                                     "seconds": est(n_docs * d + 2 * test_queries * q)}
    if "reindex" in stages:
        out["stages"]["reindex"] = {"size": f"{n_docs} points from the evaluation's cached vectors, verified",
                                    "seconds": None}
    known = [s["seconds"] for s in out["stages"].values() if s["seconds"] is not None]
    out["seconds"] = sum(known) if pace else None
    return out


def describe(plan: dict) -> list[str]:
    """The plan as lines for the log."""
    pace = plan.get("pace")
    lines = []
    if pace:
        note = " (int8 encodes faster than this fp32 pace)" if pace["int8"] else ""
        lines.append(f"plan: measured here: {1 / pace['doc']:.3g} documents/s encoding "
                     f"({pace['encode_precision']}){note}, {1 / pace['train_doc']:.3g} documents/s training "
                     "(forward + backward)")
    for name, stage in plan["stages"].items():
        lines.append(f"plan: {name}: {stage['size']}"
                     + (f", ~{_seconds(stage['seconds'])}" if stage["seconds"] is not None else ""))
    if plan.get("seconds"):
        lines.append(f"plan: ~{_seconds(plan['seconds'])} in all on this machine with a cold embedding cache "
                     "(estimates; the progress lines refine them)")
    return lines
