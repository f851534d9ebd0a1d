"""The train stage: mined triples -> a fine-tuned sentence-transformers model, on Ray Train.

Top to bottom: the plan (validation queries held
out, rows grouped by their number of hard negatives, steps from the budget); Ray Train
runs `SentenceTransformerTrainer` on every worker (`loop.py`); the best checkpoint on the
validation queries is mixed with the base model at the best weight (`validation.py`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vectune.errors import ModelError, StageError
from vectune.precision import resolved
from vectune.progress import track
from vectune.runs import Run
from vectune.spec import Spec
from vectune.train.loop import HF_CHECKPOINT, LoopConfig, score_key, train_loop
from vectune.train.losses import columns_for
from vectune.train.plan import plan, validation_docs, validation_set

log = logging.getLogger("vectune")


def _compare_modes_task(**kwargs):
    from vectune.train.validation import compare_modes

    return compare_modes(**kwargs)


def _choose_weight_task(**kwargs):
    from vectune.train.validation import choose_weight

    return choose_weight(**kwargs)


def _int8_check_task(path: str, vset: dict, tolerance: float, max_seq_length: int | None, threads: int) -> dict:
    """The kept model's int8 variant (built now, beside the model, if missing) against fp32
    on the validation queries (their texts carry the prompts already)."""
    from vectune.embed.int8_check import check_int8

    verdict = check_int8(path, vset["queries"], vset["corpus"], vset["qrels"], tolerance=tolerance,
                         max_seq_length=max_seq_length, threads=threads, sample="validation queries")
    return verdict.to_dict()


def _training_qrels(data) -> dict[str, dict[str, int]] | None:
    """Every training label, for the validation qrels (None when the labels cannot be read
    here, e.g. triples copied in from elsewhere: then only the mined pairs count)."""
    from vectune.errors import VectuneError

    try:
        return data.labels("train").qrels
    except (VectuneError, OSError) as exc:
        log.info("validation: training labels unavailable (%s); scoring against mined pairs only", exc)
        return None


def train(spec: Spec, run: Run, base_model: str, *, preflight: dict | None = None) -> dict:
    """Fine-tune `base_model` on the run's mined triples; save it in sentence-transformers format.

    Ray must be running. A re-run of the same run id resumes from the latest checkpoint
    (Ray Train restores it from the run's storage folder); worker failures resume in-run.
    With validation queries, the best checkpoint is kept and mixed with the base model at
    the weight that scores best on them (`train.interpolation`). `preflight` is the mine
    audit's verdict on these rows (`vectune.mine.preflight`), kept in the summary.
    """
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = resolved(spec)  # `auto` precision decided on a training worker (vectune.precision)
    t = spec.train
    triples = run.path("mine", "triples.parquet")
    if not triples.exists():
        raise StageError(f"no mined triples at {triples}: run `vectune mine` (or `vectune run`) first")
    table = pq.read_table(triples)
    if "grade" not in table.column_names:  # triples mined before graded labels
        table = table.append_column("grade", pa.array([1] * table.num_rows, pa.int32()))
    negatives = columns_for(t.loss, t.negatives if t.negatives is not None else spec.mine.num_negatives)
    counts = [len(x) for x in table.column("negative_ids").to_pylist()]
    p = plan(table.column("query_id").to_pylist(), counts, spec, negatives, exact_negatives=t.loss.type == "triplet")
    run.write_json("train/plan.json", {
        "held": sorted(p.held), "rows_by_negatives": {str(k): n for k, n in p.groups.items()},
        "rows_short_of_negatives": p.dropped_short, "micro_batch": p.micro_batch,
        "steps_per_epoch": p.steps_per_epoch, "total_steps": p.total_steps, "warmup_steps": p.warmup_steps,
        "checkpoint_every": p.checkpoint_every})
    m = spec.model
    served = served_length(spec, base_model)
    vset, vinfo = _validation(spec, p.held, table) if p.held else (None, None)
    vectors = run.path("train", "validation-vectors")
    if vset:  # each model's validation vectors, read again when a later scoring meets the same weights
        vset["vectors"] = str(vectors)
        base_cache = shared_cache(spec, base_model)
        if base_cache:  # the mine's vectors of the base model: scoring it before step 1 reads them
            vset["cache"] = base_cache
    primary = spec.evaluate.gate.metric
    metrics = tuple(dict.fromkeys([primary, *spec.evaluate.metrics]))
    threads = spec.runtime.torch_threads or max(1, int(math.ceil(t.cpus_per_worker)))
    prompts = {}
    if m.query_prefix:
        prompts["anchor"] = m.query_prefix
    if m.document_prefix:
        prompts.update({"positive": m.document_prefix, **{f"negative_{j + 1}": m.document_prefix
                                                          for j in range(negatives)}})
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {})}
    score = {"checkpoint_score_attribute": score_key(primary), "checkpoint_score_order": "max"} if vset else {}
    run.path("train").mkdir(parents=True, exist_ok=True)
    settings = t.grid() if vset else t.grid()[:1]
    if len(t.grid()) > 1 and not vset:
        log.warning("train.learning_rates and train.positives_per_query need validation queries to choose among "
                    "them: training with learning_rate %g, positives_per_query %s only", *t.grid()[0])
    plans = {k: _plan_for(table, p, spec, negatives, k) for k in dict.fromkeys(k for _, k in settings)}
    log.info("training on %d rows in %s (%d workers x %d per batch x %d accumulation, %d steps, "
             "%d negatives, %d validation queries x %d documents%s)", p.rows,
             {f"{k} negatives": n for k, n in p.groups.items()}, t.workers, p.micro_batch, t.gradient_accumulation,
             p.total_steps, negatives, len(p.held), len(vset["corpus"]) if vset else 0,
             f"; settings {', '.join(_label(lr, k) for lr, k in settings)} in turn" if len(settings) > 1 else "")
    tried: list[dict] = []
    rivals: dict[int, float] = {}
    base_scores: dict[str, float] | None = None
    best = None  # (score, checkpoint, its metrics, the setting's index)
    for i, (lr, per_query) in enumerate(settings):
        name = "" if i == 0 else f"-{i + 1}"  # the first setting keeps the single-setting layout
        label = "train" if len(settings) == 1 else f"train, {_label(lr, per_query)} ({i + 1}/{len(settings)})"
        sp = plans[per_query]
        keep = sorted(sp.group_of)
        train_table = table.select(["query", "positive", "negatives"]).take(pa.array(keep, pa.int64()))
        train_table = train_table.append_column("group", pa.array([sp.group_of[j] for j in keep], pa.int32()))
        # in the object store, whole, on every worker: the trainer's own (no-duplicates, per
        # dataset) batch sampler orders the rows and accelerate splits each step across workers
        ds = ray.data.from_arrow(train_table)
        with track(label, p.total_steps, unit="steps") as counter:
            config = LoopConfig(
                model_path=base_model, base_model_path=base_model, loss=t.loss, groups=tuple(sp.groups),
                micro_batch=p.micro_batch, accumulation=t.gradient_accumulation, total_steps=p.total_steps,
                warmup_steps=p.warmup_steps, checkpoint_every=p.checkpoint_every, learning_rate=lr,
                weight_decay=t.weight_decay, precision=t.precision,
                max_seq_length=t.max_seq_length or m.max_seq_length, seed=t.seed, threads=threads,
                prompts=prompts, validation=vset, metrics=metrics, primary=primary,
                log_path=str(run.path("train", f"loss{name}.jsonl")), progress=counter,
                rivals=dict(rivals), patience=t.patience if vset else None, score_base=vset is not None and i == 0,
                attention_dropout=t.attention_dropout, served_max_seq_length=served,
            )
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={"config": config},
                scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.gpus_per_worker > 0,
                                             resources_per_worker=resources),
                run_config=RunConfig(
                    name=f"ray{name}", storage_path=str(run.path("train")),
                    failure_config=FailureConfig(max_failures=t.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints, **score),
                ),
                datasets={"train": ds},
                dataset_config=DataConfig(datasets_to_split=[]),
            )
            try:
                result = trainer.fit()
            except Exception as exc:  # Ray Train raises TrainingFailedError once max_failures is spent
                raise StageError(f"training failed (re-run the same run id to resume from the last checkpoint): "
                                 f"{exc}") from None
        if result.error:
            raise StageError(f"training failed: {result.error}")
        if result.checkpoint is None:  # the trainer ran no step
            raise StageError(
                f"training ran no step: among {p.rows} rows the no-duplicates batch sampler found no batch of "
                f"{p.micro_batch} without a repeated query or document; lower train.batch_size or add labelled "
                "queries")
        curve = _curve(run.path("train", f"validation{name}.jsonl"))
        if i == 0 and curve and curve[0]["step"] == 0:
            base_scores = {k: v for k, v in curve[0].items() if k != "step"}
        steps_run = _steps_run(run.path("train", f"loss{name}.jsonl"))
        entry = {"learning_rate": lr, "positives_per_query": per_query, "trained": _trained(table, sp, negatives),
                 "steps_run": steps_run, "curve": [c for c in curve if c["step"] > 0],
                 "stopped": _why_stopped(curve, steps_run, p.total_steps, rivals, primary, t.patience)}
        tried.append(entry)
        for c in entry["curve"]:
            rivals[c["step"]] = max(rivals.get(c["step"], -math.inf), c[primary])
        candidate = (result.checkpoint, result.metrics or {})
        if vset and result.best_checkpoints:
            candidate = max(result.best_checkpoints, key=lambda cm: cm[1].get(score_key(primary), -math.inf))
        value = candidate[1].get(score_key(primary), -math.inf)
        if best is None or value > best[0]:
            best = (value, candidate[0], candidate[1], i)
        if len(settings) > 1:
            log.info("%s: %s by checkpoint (%s)%s", _label(lr, per_query),
                     ", ".join(f"{c['step']}: {c[primary]:.4f}" for c in entry["curve"]) or "no checkpoint scored",
                     entry["stopped"], f"; the base model scores {base_scores[primary]:.4f}" if base_scores else "")
    _, chosen, chosen_metrics, chosen_setting = best
    picked = run.path("train", "chosen")
    if picked.exists():
        shutil.rmtree(picked)
    chosen.to_directory(str(picked))
    tuned = str(picked / HF_CHECKPOINT)
    out = run.path("model")
    if out.exists():
        shutil.rmtree(out)
    mix = None
    if vset and t.interpolation != [1.0]:
        known = {1.0: {k: chosen_metrics[f"eval_val_{k}"] for k in metrics if f"eval_val_{k}" in chosen_metrics}}
        if base_scores:
            known[0.0] = base_scores  # weight 0 is the starting model, scored before step 1
        task = ray.remote(_choose_weight_task).options(
            num_cpus=t.cpus_per_worker, num_gpus=t.gpus_per_worker or 0)
        scored = [w for w in t.interpolation if w not in known]
        texts = len(scored) * (len(vset["queries"]) + len(vset["corpus"]))
        # from the better end inward, stopping where the score turns down: up to len(scored) weights
        with track(f"choose mixing weight (up to {len(scored)} weights)", texts, unit="texts") as counter:
            mix = ray.get(task.remote(base_path=base_model, tuned_path=tuned, out_path=str(out), vset=vset,
                                      weights=t.interpolation, metrics=metrics, primary=primary, known=known,
                                      threads=threads, max_seq_length=served,
                                      precision=t.precision, progress=counter))
        log.info("interpolation: weight %.2f of the tuned model scores best on the validation queries (%s)%s",
                 mix["weight"], ", ".join(f"{c['weight']:.2f}: {c[primary]:.4f}" for c in mix["curve"]),
                 f"; not scored, past the peak: {', '.join(f'{w:.2f}' for w in mix['skipped'])}"
                 if mix.get("skipped") else "")
    else:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(tuned, device="cpu")
        if served:  # saved at the served length, not the length its steps trained at
            model.max_seq_length = served
        model.save(str(out))  # the model alone, no optimizer state
    kept = ({k: v for k, v in next(c for c in mix["curve"] if c["weight"] == mix["weight"]).items() if k != "weight"}
            if mix else {k: chosen_metrics.get(f"eval_val_{k}") for k in metrics} if vset else None)
    beats = None
    if base_scores is not None and kept is not None:
        beats = kept[primary] > base_scores[primary] and (mix is None or mix["weight"] > 0.0)
        if not beats:
            # never a model below (or level with) the starting one on validation: keep that model,
            # and let the pipeline stop before the gate
            from sentence_transformers import SentenceTransformer

            shutil.rmtree(out, ignore_errors=True)
            SentenceTransformer(base_model, device="cpu").save(str(out))
            log.warning("no learning rate and checkpoint beats the starting model on the %d validation queries "
                        "(%s %.4f, best tuned %.4f): the tuned model is the starting model",
                        len(p.held), primary, base_scores[primary], kept[primary])
    dim = _check_dimension(base_model, str(out))
    modes = None
    if vset:  # what validation says about serving dense or hybrid, beside BM25 alone
        task = ray.remote(_compare_modes_task).options(num_cpus=t.cpus_per_worker, num_gpus=t.gpus_per_worker or 0)
        paths = {"base": base_model, **({"tuned": str(out)} if beats else {})}
        with track(f"compare served modes on validation ({len(paths)} models)", len(paths), unit="models"):
            modes = ray.get(task.remote(paths=paths, vset={**vset, "search": spec.search.model_dump()},
                                        metrics=metrics, threads=threads,
                                        max_seq_length=served, precision=t.precision))
        log.info("validation by mode (%s): %s; bm25 %.4f", primary, "; ".join(
            f"{role} " + ", ".join(f"{mode} {v[primary]:.4f}" for mode, v in r.items())
            for role, r in modes.items() if role != "bm25"), modes["bm25"][primary])
        modes["served"] = _served(spec)
        _advise_serving(modes, "tuned" if beats else "base", primary)
    int8 = None
    if vset and beats and m.precision == "int8":
        # the model is served in int8: measure that on validation before it goes further; the
        # pipeline encodes it in fp32 when int8 costs more than model.int8_tolerance
        task = ray.remote(_int8_check_task).options(num_cpus=t.cpus_per_worker)
        with track("int8 check on validation (fp32 and int8)", 1, unit="models"):
            int8 = ray.get(task.remote(path=str(out), vset=vset, tolerance=m.int8_tolerance,
                                       max_seq_length=served, threads=threads))
        log.info("int8 check: nDCG@10 int8 %.4f vs fp32 %.4f on %d validation queries (%+.4f, tolerance %g): %s",
                 int8["ndcg_int8"], int8["ndcg_fp32"], int8["queries"], -int8["drop"], int8["tolerance"],
                 "int8 kept" if int8["ok"] else "fp32 from here on")
    name = "" if chosen_setting == 0 else f"-{chosen_setting + 1}"
    history = [json.loads(line) for line in run.path("train", f"loss{name}.jsonl").read_text().splitlines() if line]
    seconds = [h["seconds"] for h in history if h.get("seconds") is not None]
    summary = {
        "model": str(out), "rows": p.rows, "rows_by_negatives": {str(k): n for k, n in p.groups.items()},
        "rows_without_negatives": p.rows_without_negatives, "rows_short_of_negatives": p.dropped_short,
        "trained": _trained(table, plans[settings[chosen_setting][1]], negatives),
        "validation_queries": len(p.held), "validation_docs": len(vset["corpus"]) if vset else 0,
        "steps": p.total_steps, "steps_per_epoch": p.steps_per_epoch, "budget_steps": t.max_steps,
        "warmup_steps": p.warmup_steps, "checkpoint_every": p.checkpoint_every, "negatives": negatives,
        "learning_rate": settings[chosen_setting][0], "positives_per_query": settings[chosen_setting][1],
        "dimension": dim, "final_loss": history[-1]["loss"] if history else None,
        "mean_step_seconds": float(np.mean(seconds)) if seconds else None,
        "checkpoint": {"step": _step_of(picked), "validation": {k: chosen_metrics.get(f"eval_val_{k}")
                                                                  for k in metrics} if vset else None},
        "interpolation": mix, "preflight": preflight,
        "validation": {**(vinfo or {}), "base": base_scores, "kept": kept, "beats_base": beats, "modes": modes},
        "settings": tried, "int8": int8,
    }
    run.write_json("train/settings.json", {"primary": primary, "base": base_scores, "settings": tried,
                                           "chosen": {"learning_rate": settings[chosen_setting][0],
                                                      "positives_per_query": settings[chosen_setting][1],
                                                      "step": summary["checkpoint"]["step"],
                                                      "weight": mix["weight"] if mix else 1.0, "beats_base": beats},
                                           "modes": modes})
    if mix:
        run.write_json("train/interpolation.json", mix)
    write_card(out, spec, base_model, summary, metrics=None)
    if vset and (folder := shared_cache(spec, str(out))):
        from vectune.train.validation import export_to_cache

        # the kept model's validation vectors: the evaluate stage encodes only the rest of the corpus
        added = export_to_cache(str(out), vset, folder, t.precision, served)
        if added:
            log.info("validation: %d document vectors of the kept model go to its embedding cache", added)
    shutil.rmtree(vectors, ignore_errors=True)  # the stage's own scratch (a few MB a model)
    return summary


def _validation(spec: Spec, held: frozenset[str], table) -> tuple[dict, dict]:
    """The validation set of the held-out queries (`vectune.train.plan.validation_docs`):
    their training labels, ranking the corpus or a sample of it holding every one of them."""
    from vectune.data import DomainData

    t, m = spec.train, spec.model
    data = DomainData(spec)
    qrels = _training_qrels(data)
    if qrels is None:  # triples from elsewhere: the mined pairs are the labels
        qrels = {}
        for q, d, g in zip(*(table.column(c).to_pylist() for c in ("query_id", "positive_id", "grade"))):
            qrels.setdefault(q, {})[d] = int(g or 1)
    queries = dict(zip(table.column("query_id").to_pylist(), table.column("query").to_pylist()))
    labelled = {d for q in held for d in qrels.get(q, {})}
    ids, sampled = validation_docs(data.corpus.ids, labelled, t.validation_docs, t.seed)
    texts = data.documents(set(ids))
    vset = validation_set(set(held), queries, qrels, texts, (m.query_prefix, m.document_prefix))
    # BM25 vectors of the raw texts, made once here: checkpoints are ranked as served
    # (`search`, when it is hybrid), and the kept model is compared across modes at the end
    from vectune.ranking import bm25_vectors

    vset["bm25"] = {"docs": bm25_vectors(spec.bm25, [texts[d] for d in vset["corpus"]]),
                    "queries": bm25_vectors(spec.bm25, [queries[q] for q in vset["queries"]], query=True)}
    if spec.search.mode != "dense":
        vset["search"] = spec.search.model_dump()
    info = {"queries": len(vset["queries"]), "docs": len(vset["corpus"]), "corpus": data.corpus.count,
            "sampled": sampled, "labelled": sum(len(v) for v in vset["qrels"].values()), "mode": spec.search.mode}
    log.info("validation: %d held-out training queries rank %s (%d labelled), %s", info["queries"],
             f"a sample of {info['docs']:,} of the {info['corpus']:,} documents" if sampled
             else f"the whole corpus ({info['docs']:,} documents)", info["labelled"],
             "dense" if spec.search.mode == "dense" else f"{spec.search.mode} ({spec.search.fusion}) as served")
    return vset, info


def served_length(spec: Spec, base_model: str) -> int | None:
    """The length the stages encode at: `model.max_seq_length`, else the base model's own. Validation
    scores every model at it and the kept model is saved with it, whatever length the training
    steps ran at (`train.max_seq_length`). None: nothing overrides a length, every model keeps
    the base's."""
    m, t = spec.model, spec.train
    if m.max_seq_length or not t.max_seq_length:
        return m.max_seq_length
    from vectune.embed.models import load_model, model_limits

    return model_limits(base_model)["max_seq_length"] or load_model(base_model, device="cpu").max_seq_length


def shared_cache(spec: Spec, model_path: str) -> str | None:
    """The embedding cache folder of `model_path`'s document vectors, where validation computes
    the vectors the stages' encoders would (the same precision, under autocast or none, and, as
    validation encodes at the served length, the same max_seq_length and prefix; normalised), so
    the two may share them; else None."""
    from vectune.embed.encoder import encoder_config

    m, t = spec.model, spec.train
    if not m.normalize:
        return None
    config = encoder_config(spec, model_path, role="document")
    if config.cache_dir is None or config.precision not in ("fp32", "bf16") or config.precision != t.precision:
        return None
    return config.cache_dir


def _served(spec: Spec) -> str:
    """The spec's `search` section as a validation mode: `dense` or `hybrid/<fusion>`."""
    return "dense" if spec.search.mode == "dense" else f"{spec.search.mode}/{spec.search.fusion}"


def _advise_serving(modes: dict, role: str, primary: str) -> None:
    """Say so when validation scores `role` higher served another way than the spec serves it
    (the spec is the user's to change: what is served is never switched behind their back)."""
    served = modes["served"]
    scores = {mode: v[primary] for mode, v in modes[role].items()}
    best = max(scores, key=lambda mode: scores[mode])
    if best != served and scores[best] > scores[served]:
        mode, _, fusion = best.partition("/")
        how = "search.mode: dense" if mode == "dense" else f"search.mode: {mode}, search.fusion: {fusion}"
        log.warning("validation: the %s model scores %s %.4f served %s, against %.4f served as the spec says "
                    "(%s); `%s` would serve it (then gate on it: the gate compares like with like)",
                    role, primary, scores[best], best, scores[served], served, how)


def _curve(path: Path) -> list[dict]:
    """A setting's validation scores by step (step 0: the starting model), from validation.jsonl."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def _steps_run(path: Path) -> int:
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _why_stopped(curve: list[dict], steps_run: int, total: int, rivals: dict[int, float], primary: str,
                 patience: int | None) -> str:
    """Why a setting ended where it did, in words (for the log and the report)."""
    if steps_run >= total:
        return "ran its budget"
    scored = [c for c in curve if c["step"] > 0]
    if scored and scored[-1]["step"] in rivals and scored[-1][primary] < rivals[scored[-1]["step"]]:
        return f"stopped at step {scored[-1]['step']}: behind an earlier learning rate there"
    if patience:
        return f"stopped at step {steps_run}: {patience} checkpoint(s) without a validation gain"
    return f"stopped at step {steps_run}"


def _label(lr: float, per_query: int | None) -> str:
    return f"learning rate {lr:g}" + ("" if per_query is None else f", {per_query} positives per query")


def _plan_for(table, p, spec: Spec, negatives: int, per_query: int | None):
    """The plan of a `train.positives_per_query` setting: `p` itself for every row (None); else
    the rows `rows_per_query` picks, trained for `p`'s steps (every setting runs the same steps,
    so validation compares them step for step)."""
    import dataclasses

    from vectune.train.plan import plan, rows_per_query

    if per_query is None:
        return p
    if "positive_rank" not in table.column_names:
        log.warning("these triples were mined before rows recorded their positive's rank: positives_per_query "
                    "%d trains on every row", per_query)
        return p
    t = spec.train
    qids = table.column("query_id").to_pylist()
    rows = rows_per_query(qids, table.column("positive_rank").to_pylist(), p, per_query,
                          budget=p.total_steps * t.batch_size, seed=t.seed)
    counts = [len(x) for x in table.column("negative_ids").to_pylist()]
    try:
        sub = plan(qids, counts, spec, negatives, exact_negatives=t.loss.type == "triplet", only=rows)
    except StageError as exc:
        raise StageError(f"train.positives_per_query {per_query}: {exc}") from None
    return dataclasses.replace(sub, total_steps=p.total_steps, warmup_steps=p.warmup_steps,
                               checkpoint_every=p.checkpoint_every)


def _trained(table, p, negatives: int) -> dict:
    """What actually trained: rows, queries, positives per query, hard negatives per row."""
    from collections import Counter

    idx = sorted(p.group_of)
    qids = table.column("query_id").to_pylist()
    per_query = Counter(qids[i] for i in idx)
    negs = Counter(p.group_of[i] for i in idx)
    dist = Counter(per_query.values())
    return {"rows": len(idx), "queries": len(per_query),
            "positives_per_query": {"mean": round(len(idx) / max(1, len(per_query)), 3),
                                    "distribution": {str(k): n for k, n in sorted(dist.items())}},
            "negatives_per_row": {str(k): n for k, n in sorted(negs.items())}, "negatives_asked": negatives}


def _step_of(checkpoint_dir: Path) -> int | None:
    state = checkpoint_dir / HF_CHECKPOINT / "trainer_state.json"
    return json.loads(state.read_text()).get("global_step") if state.exists() else None


def _check_dimension(base: str, tuned: str) -> int:
    from vectune.embed import load_model
    from vectune.embed.models import embedding_dimension

    b, t = embedding_dimension(load_model(base)), embedding_dimension(load_model(tuned))
    if b != t:
        raise ModelError(f"the tuned model outputs {t} dimensions, the base model {b}: vectors would not be comparable")
    return t


def write_card(folder: Path, spec: Spec, base_model: str, summary: dict, metrics: dict | None) -> None:
    """vectune's model card: base model, data, loss, hyperparameters, base vs tuned metrics."""
    card = {
        "base_model": spec.model.base, "base_model_path": base_model, "spec": spec.name, "spec_hash": spec.digest(),
        "data": {"corpus": spec.data.corpus.path, "train": spec.data.train.path if spec.data.train else None},
        "loss": spec.train.loss.model_dump(), "train": spec.train.model_dump(mode="json"),
        "mine": spec.mine.model_dump(mode="json"), "summary": summary, "metrics": metrics,
    }
    (folder / "vectune_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    lines = [
        f"# {spec.name}: {spec.model.base} fine-tuned by vectune", "",
        f"- base model: `{spec.model.base}`", f"- training labels: `{card['data']['train']}`",
        f"- loss: `{json.dumps(card['loss'])}`",
        f"- epochs {spec.train.epochs}, batch {spec.train.batch_size}, lr {spec.train.learning_rate}, "
        f"warm-up {spec.train.warmup_ratio}, weight decay {spec.train.weight_decay}, precision {spec.train.precision}",
        f"- steps {summary.get('steps')}, rows {summary.get('rows')}, dimension {summary.get('dimension')}", "",
    ]
    if metrics:
        names = sorted({m for v in metrics.values() for m in v})
        lines += ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for role, vals in metrics.items():
            lines.append(f"| {role} | " + " | ".join(f"{vals.get(n, float('nan')):.4f}" for n in names) + " |")
    (folder / "README.md").write_text("\n".join(lines) + "\n")
