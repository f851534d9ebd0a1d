"""Step time of vectune's Ray Train path vs a plain sentence-transformers loop, same batch.

Both train all-MiniLM-L6-v2 with MultipleNegativesRankingLoss on the same SciFact triples
(query, positive, one negative), same batch size and sequence length, in one run:

- plain: a single-process loop (preprocess -> loss -> backward -> AdamW step), 2 torch threads,
  model in train mode (dropout on) as SentenceTransformerTrainer runs it;
- ray-1: `vectune.train.train` with 1 worker (2 CPUs): SentenceTransformerTrainer inside
  Ray Train's TorchTrainer;
- previous (with --previous DIR): the same call in an earlier vectune checkout (its own
  `src/` and `benchmarks/train.py`, in a subprocess), e.g. the hand-written training loop
  this trainer replaced: `git worktree add /tmp/prev 0f9bd38`;
- ray-2: the same as ray-1 with 2 workers x 1 CPU (gradients all-reduced over gloo), for throughput.

Step time is wall time between consecutive steps (data ingestion included), first step
excluded as warm-up. plain and ray-1 alternate for --rounds rounds; the reported ratio is the
median of the per-round ratios. Writes benchmarks/results/train.json.

    python benchmarks/train.py [--steps 8] [--batch 16] [--seq 128] [--rounds 3] [--previous DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact"


def triples(n: int, seed: int = 0) -> list[dict]:
    docs = {}
    for line in open(DATA / "corpus.jsonl"):
        d = json.loads(line)
        docs[d["_id"]] = f"{d['title']} {d['text']}".strip()
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in open(DATA / "queries.jsonl")}
    rows = [l.rstrip("\r\n").split("\t") for l in open(DATA / "qrels" / "train.tsv")][1:]
    rng = random.Random(seed)
    ids = list(docs)
    out = []
    for q, d, _ in rows[:n]:
        neg = rng.choice(ids)
        out.append({"query_id": q, "query": queries[q], "positive_id": d, "positive": docs[d], "positive_score": 0.0,
                    "negative_ids": [neg], "negatives": [docs[neg]], "negative_scores": [0.0]})
    return out


def plain(rows, steps, batch, seq, lr=5e-5) -> list[float]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from vectune.embed import resolve_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"))
    model.max_seq_length = seq
    loss = MultipleNegativesRankingLoss(model)
    # fused AdamW, the transformers Trainer's default optimizer with torch >= 2.8 (as vectune's)
    opt = torch.optim.AdamW(loss.parameters(), lr=lr, fused=True)
    # train mode, as SentenceTransformerTrainer sets it before every step: a freshly loaded
    # SentenceTransformer has its transformer in eval mode (from_pretrained), i.e. no dropout,
    # which makes a step ~15% cheaper than any real training step, vectune's included.
    model.train()
    stamps = []
    for i in range(steps):
        b = rows[i * batch:(i + 1) * batch]
        cols = [[r["query"] for r in b], [r["positive"] for r in b], [r["negatives"][0] for r in b]]
        feats = [model.preprocess(c) for c in cols]
        value = loss(feats, None)
        value.backward()
        torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        stamps.append(time.time())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def ray_path(rows, steps, batch, seq, workers, cpus, tmp) -> list[float]:
    from vectune.runs import Run, base_model_path
    from vectune.runtime import ray_session
    from vectune.spec import validate_dict
    from vectune.train import train

    spec = validate_dict({
        "version": 1, "name": f"bench-{workers}",
        "data": {"corpus": {"path": str(DATA / "corpus.jsonl")}},
        "model": {"max_seq_length": seq},
        "train": {"workers": workers, "cpus_per_worker": cpus, "batch_size": batch, "negatives": 1,
                  "epochs": steps * batch / len(rows), "checkpoint_every": 10_000, "learning_rate": 5e-5,
                  "warmup_ratio": 0.0, "validation_queries": 0, "interpolation": [1.0]},
        "runtime": {"runs": str(tmp), "num_cpus": 2},
    }, "bench")
    run = Run.create(spec)
    run.path("mine").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), run.path("mine", "triples.parquet"))
    with ray_session(spec.runtime):
        train(spec, run, base_model_path(spec))
    hist = [json.loads(l) for l in run.path("train", "loss.jsonl").read_text().splitlines() if l]
    stamps = [h["time"] for h in hist]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def previous_path(prev: Path, rows, steps, batch, seq, tmp) -> list[float]:
    """`ray_path` of an earlier checkout, run in a subprocess with that checkout's code."""
    import subprocess
    import sys

    Path(tmp).mkdir(parents=True, exist_ok=True)
    rows_file = Path(tmp) / "rows.json"
    rows_file.write_text(json.dumps(rows))
    code = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(prev / 'src')!r}, {str(prev / 'benchmarks')!r}]\n"
        "import train as bench\n"
        f"rows = json.load(open({str(rows_file)!r}))\n"
        f"out = bench.ray_path(rows, {steps}, {batch}, {seq}, 1, 2, __import__('pathlib').Path({str(tmp)!r}))\n"
        "print('STEPS ' + json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(prev / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    line = next((x for x in done.stdout.splitlines() if x.startswith("STEPS ")), None)
    if line is None:
        raise RuntimeError(f"the previous checkout's run failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("STEPS "):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3,
                    help="plain and ray-1 alternate this many times; the ratio is taken per round")
    ap.add_argument("--previous", type=Path, default=None,
                    help="an earlier vectune checkout to time beside this one (its ray_path)")
    ap.add_argument("--skip-two-workers", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    args = ap.parse_args()
    rows = triples(args.steps * args.batch)
    med = statistics.median
    # This machine's speed drifts by 10-20% over minutes (shared host), more than the gap
    # being measured: back-to-back pairs, alternating which side goes first, cancel the drift.
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            sides = ["plain", "ray_1"] + (["previous"] if args.previous else [])
            order = sides if k % 2 == 0 else sides[::-1]
            got = {}
            for side in order:
                if side == "plain":
                    got[side] = plain(rows, args.steps, args.batch, args.seq)
                elif side == "ray_1":
                    got[side] = ray_path(rows, args.steps, args.batch, args.seq, 1, 2, Path(tmp) / f"r1-{k}")
                else:
                    got[side] = previous_path(args.previous.resolve(), rows, args.steps, args.batch, args.seq,
                                              Path(tmp) / f"prev-{k}")
            extra = {"ratio_vs_previous": med(got["ray_1"]) / med(got["previous"])} if args.previous else {}
            rounds.append(got | {"ratio": med(got["ray_1"]) / med(got["plain"])} | extra)
            print(f"round {k + 1}: plain {med(got['plain']):.3f} s, ray-1 {med(got['ray_1']):.3f} s, "
                  + (f"previous {med(got['previous']):.3f} s, vs previous {extra['ratio_vs_previous']:.3f}, "
                     if args.previous else "") + f"ratio {rounds[-1]['ratio']:.3f}", flush=True)
        r2 = [] if args.skip_two_workers else ray_path(rows, args.steps, args.batch, args.seq, 2, 0.9,
                                                         Path(tmp) / "r2")
    p = [x for r in rounds for x in r["plain"]]
    r1 = [x for r in rounds for x in r["ray_1"]]
    result = {
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"loss": "mnrl", "negatives": 1, "model": "all-MiniLM-L6-v2",
                               "plain_mode": "model.train() (dropout on), as SentenceTransformerTrainer"},
        "trainer": "SentenceTransformerTrainer inside Ray Train's TorchTrainer (prepare_trainer, "
                   "RayTrainReportCallback)",
        "plain_step_s": med(p), "ray_1_worker_step_s": med(r1), "ray_2_workers_step_s": med(r2) if r2 else None,
        "ratio_ray1_vs_plain": med(r["ratio"] for r in rounds),
        "ratio_per_round": [r["ratio"] for r in rounds], "goal_ratio": 1.10,
        **({"previous": str(args.previous), "previous_step_s": med(x for r in rounds for x in r["previous"]),
            "ratio_vs_previous": med(r["ratio_vs_previous"] for r in rounds),
            "ratio_vs_previous_per_round": [r["ratio_vs_previous"] for r in rounds],
            "goal_ratio_vs_previous": 1.10} if args.previous else {}),
        "rows_per_s": {"plain": args.batch / med(p), "ray_1_worker": args.batch / med(r1),
                       "ray_2_workers": args.batch / med(r2) if r2 else None},
        "raw": {"rounds": [{k: r[k] for k in ("plain", "ray_1", "previous") if k in r} for r in rounds],
                "ray_2": r2},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    main()
