"""Hard-negative mining: vectune's mine stage against `sentence_transformers.util.mine_hard_negatives`.

Same data (SciFact train pairs, the whole corpus as candidates), same model, same settings
(num_negatives 3, range_min 10, range_max 100, relative_margin 0.05, sampling top; ST with
use_faiss False and batch size = the spec's model.batch_size), in one process, one run of
`--rounds` rounds, each of:

1. sentence-transformers: load the model, mine (it embeds corpus and queries every time);
2. vectune cold: start Ray, mine with an empty embedding cache (a fresh runs folder), stop Ray;

the two in turn, the first of them alternating from round to round (ABBA), and after the last
cold run, 3. vectune warm: mine again in a new run: the embedding cache holds every vector.

Ratios are vectune's seconds over ST's; the Ray start is counted in both vectune figures
(what `vectune mine` pays); the cold ratio is the median of the rounds' ratios. Ray workers run at ST's priority (see RAY_worker_niceness below);
the load average before and after each side is recorded, as the machine may be shared. The chosen negatives are compared query by query, by text:
`overlap` is the fraction of vectune's negatives that ST chose too.

    python benchmarks/mine.py [--max-queries 100 --corpus-limit 1000] [--out benchmarks/results/mine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray starts its workers at nice 15; sentence-transformers runs in this process at nice 0.
# On a machine shared with other work that alone decides the race, so both sides get the
# same priority here (RAY_WORKER_NICENESS in the result says which was used).
os.environ.setdefault("RAY_worker_niceness", "0")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
# `reference: weakest` and no pair cap: the library's rule (every candidate judged against the
# query's weakest positive) on every pair, so both sides choose among the same candidates
SETTINGS = {"num_negatives": 3, "range_min": 10, "range_max": 100, "relative_margin": 0.05, "sampling": "top",
            "margin": None, "max_score": None, "reference": "weakest", "max_pairs": None}
GOALS = {"cold": 1.0, "warm": 0.2}


def _natural(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def prepare(data_dir: Path, work: Path, max_queries: int | None, corpus_limit: int | None) -> dict:
    """Write the benchmark's corpus, queries and train qrels under `work`; return them for ST."""
    from vectune.data import doc_text

    qrels: dict[str, list[str]] = {}
    for line in (data_dir / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            q, d, score = line.strip().split("\t")
            if int(score) > 0:
                qrels.setdefault(q, []).append(d)
    qids = sorted(qrels, key=_natural)[:max_queries] if max_queries else sorted(qrels, key=_natural)
    needed = {d for q in qids for d in qrels[q]}
    lines, docs = [], {}
    with open(data_dir / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            if corpus_limit is None or rec["_id"] in needed or len(lines) < corpus_limit:
                lines.append(line.rstrip("\r\n"))
                docs[rec["_id"]] = doc_text(rec.get("title"), rec.get("text"))
    queries = {}
    with open(data_dir / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                queries[rec["_id"]] = rec["text"]
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q in qids for d in qrels[q]), encoding="utf-8")
    return {"qids": qids, "qrels": qrels, "docs": docs, "queries": queries}


def run_st(model_path: str, data: dict, batch_size: int) -> tuple[float, dict[str, list[str]]]:
    """sentence-transformers' miner, model load included; negatives by query text."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    start = time.perf_counter()
    model = SentenceTransformer(model_path, device="cpu")
    pairs = [(data["queries"][q], data["docs"][d]) for q in data["qids"] for d in data["qrels"][q]]
    dataset = Dataset.from_dict({"query": [p[0] for p in pairs], "positive": [p[1] for p in pairs]})
    out = mine_hard_negatives(
        dataset, model, corpus=list(data["docs"].values()), range_min=SETTINGS["range_min"],
        range_max=SETTINGS["range_max"], relative_margin=SETTINGS["relative_margin"],
        num_negatives=SETTINGS["num_negatives"], sampling_strategy="top", batch_size=batch_size,
        use_faiss=False, output_format="triplet", verbose=True,
    )
    seconds = time.perf_counter() - start
    chosen: dict[str, list[str]] = {}
    for row in out:
        negs = chosen.setdefault(row["query"], [])
        if row["negative"] not in negs:
            negs.append(row["negative"])
    return seconds, chosen


def vectune_spec(work: Path, data_dir: Path, runs: Path, batch_size: int, precision: str = "fp32"):
    from vectune.spec import validate_dict

    mapping = {
        "version": 1, "name": "bench-mine",
        "data": {"corpus": {"path": str(work / "corpus.jsonl")}, "queries": {"path": str(data_dir / "queries.jsonl")},
                 "train": {"path": str(work / "train.tsv")}},
        "model": {"base": "all-MiniLM-L6-v2", "batch_size": batch_size, "precision": precision},
        "mine": SETTINGS,
        "runtime": {"runs": str(runs)},
    }
    return validate_dict(mapping, "benchmarks/mine.py")


def run_vectune(spec) -> dict:
    """One mine in a new run (Ray already up); the audit, its wall time, and the rows."""
    import pyarrow.parquet as pq

    from vectune.data import DomainData
    from vectune.mine import TRIPLES, mine
    from vectune.runs import Run

    data = DomainData(spec)
    start = time.perf_counter()
    run = Run.create(spec)
    audit = mine(spec, data, run)
    seconds = time.perf_counter() - start
    chosen: dict[str, list[str]] = {}
    for row in pq.read_table(run.path(*TRIPLES)).to_pylist():
        chosen.setdefault(row["query"], list(row["negatives"]))
    return {"seconds": seconds, "audit": audit, "chosen": chosen}


def overlap(ours: dict[str, list[str]], theirs: dict[str, list[str]]) -> dict:
    shared = sum(len(set(v) & set(theirs.get(q, []))) for q, v in ours.items())
    n_ours = sum(len(v) for v in ours.values())
    n_theirs = sum(len(v) for v in theirs.values())
    same = sum(set(v) == set(theirs.get(q, [])) for q, v in ours.items())
    return {"vectune_negatives": n_ours, "st_negatives": n_theirs, "shared": shared,
            "overlap": round(shared / n_ours, 4) if n_ours else None,
            "st_also_in_vectune": round(shared / n_theirs, 4) if n_theirs else None,
            "queries_identical": same, "queries": len(ours)}


def _as_reference(stats: dict) -> dict:
    """overlap()'s figures with its second side named `reference` instead of `st`."""
    return {k.replace("st_", "reference_", 1) if k.startswith("st_") else k: v for k, v in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--max-queries", type=int, default=None, help="First N train queries (all by default).")
    parser.add_argument("--corpus-limit", type=int, default=None,
                        help="First N corpus documents, plus every positive (all by default).")
    parser.add_argument("--batch-size", type=int, default=64, help="Encode batch size, both sides.")
    parser.add_argument("--rounds", type=int, default=2,
                        help="ST / vectune-cold rounds, alternating which runs first; the ratio is the median.")
    parser.add_argument("--int8", action="store_true",
                        help="Each round also mines with model.precision int8 (cold: a fresh runs folder, so the "
                             "int8 graph is exported once inside the clock), beside the fp32 run.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mine.json")
    args = parser.parse_args()

    import ray

    from vectune.runtime import init_ray
    from vectune.embed import resolve_model

    model_path = resolve_model("all-MiniLM-L6-v2")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="vectune-bench-mine-") as tmp:
        work = Path(tmp)
        data = prepare(args.data, work / "data", args.max_queries, args.corpus_limit)
        print(f"{len(data['qids'])} queries, {len(data['docs'])} documents", file=sys.stderr)
        load = {"before": os.getloadavg()}
        for i in range(args.rounds):
            row: dict = {}
            # ABBA: the side that runs first alternates, so drift in the machine's speed
            # (10-20% over minutes here) does not always favour the same side
            for side in ("st", "vectune") if i % 2 == 0 else ("vectune", "st"):
                if side == "st":
                    row["st"], row["st_chosen"] = run_st(model_path, data, args.batch_size)
                    print(f"round {i + 1}: sentence-transformers {row['st']:.1f} s", file=sys.stderr)
                    continue
                # a fresh runs folder: an empty embedding cache, i.e. cold
                spec = vectune_spec(work / "data", args.data, work / f"runs{i}", args.batch_size)
                start = time.perf_counter()
                init_ray(spec.runtime)
                row["ray_start"] = time.perf_counter() - start
                row["cold"] = run_vectune(spec)
                print(f"round {i + 1}: vectune cold {row['ray_start']:.1f} s Ray start + "
                      f"{row['cold']['seconds']:.1f} s", file=sys.stderr)
                if i == args.rounds - 1:
                    row["warm"] = run_vectune(spec)
                    print(f"vectune warm: {row['warm']['seconds']:.1f} s", file=sys.stderr)
                if args.int8:
                    spec8 = vectune_spec(work / "data", args.data, work / f"runs{i}-int8", args.batch_size, "int8")
                    row["int8"] = run_vectune(spec8)
                    print(f"round {i + 1}: vectune int8 cold {row['int8']['seconds']:.1f} s", file=sys.stderr)
                # Ray down before ST runs: its idle helper processes would tax ST's CPUs
                ray.shutdown()
            row["ratio"] = (row["ray_start"] + row["cold"]["seconds"]) / row["st"]
            rounds.append(row)
            load[f"after_round_{i + 1}"] = os.getloadavg()

    first, last = rounds[0], rounds[-1]
    cold, warm, st_chosen = first["cold"], last["warm"], first["st_chosen"]
    cold_ratio = statistics.median(r["ratio"] for r in rounds)
    ratios = {"cold": round(cold_ratio, 3),
              "warm": round((last["ray_start"] + warm["seconds"]) / last["st"], 3),
              "warm_ray_running": round(warm["seconds"] / last["st"], 3),
              "cold_rounds": [round(r["ratio"], 3) for r in rounds]}
    audit = cold["audit"]
    result = {
        "benchmark": "mine",
        "data": {"queries": len(data["qids"]), "pairs": audit["pairs_mined"], "documents": len(data["docs"]),
                 "max_queries": args.max_queries, "corpus_limit": args.corpus_limit},
        "settings": {**SETTINGS, "batch_size": args.batch_size, "st_use_faiss": False},
        "seconds": {"rounds": [{"sentence_transformers": round(r["st"], 2), "ray_start": round(r["ray_start"], 2),
                                "vectune_cold": round(r["cold"]["seconds"], 2),
                                "vectune_cold_phases": r["cold"]["audit"]["seconds"]} for r in rounds],
                    "vectune_warm": round(warm["seconds"], 2), "vectune_warm_phases": warm["audit"]["seconds"]},
        "ratio": ratios,
        "ratio_method": "cold: median over rounds of (Ray start + vectune cold) / ST; rounds alternate "
                        "which side runs first; Ray is shut down while ST runs",
        "goals": {k: {"max_ratio": v, "met": ratios[k] <= v} for k, v in GOALS.items()},
        "negatives": overlap(cold["chosen"], st_chosen),
        "warm_same_as_cold": cold["chosen"] == warm["chosen"],
        "cold_same_every_round": all(r["cold"]["chosen"] == cold["chosen"] for r in rounds),
        "st_same_every_round": all(r["st_chosen"] == st_chosen for r in rounds),
        "audit": {k: audit[k] for k in ("queries_mined", "triples_out", "negatives_out", "queries_short",
                                        "rows_short", "queries_without_negatives", "dropped", "embedding_cache",
                                        "corpus_vectors")},
        "warm_embedding_cache": warm["audit"]["embedding_cache"],
        "scores": {k: audit["scores"][k] for k in ("positive", "negative", "difference")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": load,
                    "ray_worker_niceness": os.environ.get("RAY_worker_niceness")},
    }
    if args.int8:
        int8 = [r["int8"] for r in rounds]
        result["int8"] = {
            "seconds": [round(r["seconds"], 2) for r in int8],
            "phases": [r["audit"]["seconds"] for r in int8],
            # what the precision buys in the stage: int8 cold over fp32 cold, per round, then the median
            "ratio_vs_fp32_cold": round(statistics.median(r["int8"]["seconds"] / r["cold"]["seconds"] for r in rounds), 3),
            "ratio_vs_st": round(statistics.median((r["ray_start"] + r["int8"]["seconds"]) / r["st"] for r in rounds), 3),
            "negatives_vs_fp32": _as_reference(overlap(int8[0]["chosen"], cold["chosen"])),
            "negatives_vs_st": _as_reference(overlap(int8[0]["chosen"], st_chosen)),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "ratio", "goals", "negatives", "int8") if k in result},
                     indent=2))


if __name__ == "__main__":
    main()
