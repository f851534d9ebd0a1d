"""Re-index throughput and memory: is writing to Qdrant hidden behind encoding?

For each corpus (a SciFact slice and a synthetic corpus of short documents):

(a) embed-only docs/s: the re-index's own read -> encode pipeline into a sink that drops rows;
(b) full re-index time / embed-only time, for the load phase (read -> encode -> upsert)
    and for the whole stage (plus create, verify, alias swap); goal <= 1.10;
(c) upsert-only points/s of vectune's writer (Ray write tasks -> the owner actor -> Qdrant Edge)
    over precomputed vectors vs plain `EdgeShard.update(upsert_points)` in one process, at the
    best batch size; goal >= 1.0;
(d) peak RSS of the driver plus every Ray process (psutil, sampled every 0.2 s) per
    phase, and the full re-index of the synthetic corpus repeated at a fifth of its size:
    the peak should not grow with the corpus (`memory_scaling`);
(e) `--phases sync`: what a nightly job pays, sync in place vs full re-index, from the same
    warm embedding cache, with 1% of the corpus changed (goal <= 0.10) and with no change
    (goal <= 0.05); see `sync_vs_full`.

Each corpus runs in its own process with its own local Ray, so nothing (a loaded model,
a warm worker pool) carries over from one measurement set to the next.

Every pass starts with a cold embedding cache (a fresh runs folder) and a fresh Qdrant
folder on tmpfs (`--qdrant-dir` puts it on a disk). Results go to benchmarks/results/reindex.json.

    python benchmarks/reindex.py --quick                 # SciFact 1,000 + synthetic 5,000
    python benchmarks/reindex.py                         # SciFact 5,183 + synthetic 50,000 (long)
    python benchmarks/reindex.py --docs 500 --synthetic 2000 --concurrency 2
    python benchmarks/reindex.py --phases sync --synthetic-seq 32 --out benchmarks/results/reindex_sync.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
DIM = 384


# -- memory ---------------------------------------------------------------------------
def _role(name: str) -> str:
    return ("driver" if name == "driver" else "shard_check" if name == "shard_check"
            else "encoder_actor" if "Encoder" in name
            else "writer" if "StoreOwner" in name else "other_worker" if name.startswith("ray::")
            else "ray_system")


def _rss_parts(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and RssShmem of a process (bytes), from /proc (Linux); {} elsewhere."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    key, value = line.split(":", 1)
                    out[key[3:].lower()] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return out


class PeakRSS:
    """Peak RSS of this process and all its descendants (the local Ray), sampled, and the
    CPU seconds they used (the last sample of each process; a process that lives less
    than one interval is missed). CPU seconds are steadier than wall time on a shared
    machine, where other people's jobs take turns with ours."""

    def __init__(self, every: float = 0.2):
        self.every = every
        self.peak_total = 0
        self.peak_driver = 0
        self.at_peak: dict = {}
        self.by_pid: dict[int, tuple[int, str]] = {}  # each process's own peak, and its name then
        #: each process's own peak of each part of its RSS (/proc status: RssAnon, its heap;
        #: RssFile, mapped files such as the shard; RssShmem, shared memory such as Ray's
        #: object store, whose pages a process wrote stay counted in its RSS after Ray freed them)
        self.parts_by_pid: dict[int, dict[str, int]] = {}
        self._cpu: dict[int, float] = {}
        self._cpu0: dict[int, float] = {}
        self._stop = threading.Event()

    def _procs(self):
        me = psutil.Process()
        return [me, *me.children(recursive=True)]

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            by_name: dict[str, list] = {}
            try:
                procs = self._procs()
            except psutil.Error:
                continue
            for i, proc in enumerate(procs):
                try:
                    with proc.oneshot():
                        rss = proc.memory_info().rss
                        t = proc.cpu_times()
                        name = "driver" if i == 0 else proc.name()
                        if name.startswith("python") and "vectune.index.verify" in proc.cmdline():
                            name = "shard_check"  # the untouched-file sync's child, which maps the shard
                except psutil.Error:
                    continue
                total += rss
                parts = _rss_parts(proc.pid)
                if parts:
                    seen = self.parts_by_pid.setdefault(proc.pid, {})
                    for key, value in parts.items():
                        seen[key] = max(seen.get(key, 0), value)
                if rss > self.by_pid.get(proc.pid, (0, ""))[0]:
                    self.by_pid[proc.pid] = (rss, name)
                entry = by_name.setdefault(name[:40], [0, 0])
                entry[0] += 1
                entry[1] += rss
                if i == 0:
                    self.peak_driver = max(self.peak_driver, rss)
                self._cpu0.setdefault(proc.pid, t.user + t.system)
                self._cpu[proc.pid] = t.user + t.system
            if total > self.peak_total:
                self.peak_total = total
                self.at_peak = {k: {"procs": c, "rss_mib": round(r / 2**20, 1)} for k, (c, r) in
                                sorted(by_name.items(), key=lambda kv: -kv[1][1])}
            self._stop.wait(self.every)

    def __enter__(self):
        # processes alive before the phase count only what they use during it
        for proc in self._procs():
            try:
                t = proc.cpu_times()
                self._cpu0[proc.pid] = t.user + t.system
            except psutil.Error:
                pass
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def cpu_seconds(self) -> float:
        return sum(self._cpu[p] - self._cpu0.get(p, 0.0) for p in self._cpu)

    def cpu_by_role(self) -> dict:
        """CPU seconds per role (as `roles` names them): where a phase's CPU went."""
        out: dict[str, float] = {}
        for pid, t in self._cpu.items():
            role = _role(self.by_pid.get(pid, (0, "?"))[1])
            out[role] = round(out.get(role, 0.0) + t - self._cpu0.get(pid, 0.0), 1)
        return out

    def roles(self) -> dict:
        """Peak RSS (MiB) of the busiest process in each role, each at its own peak: the driver,
        an encoder actor, the embedded engine's owner (the writer: it holds the engine, vectors
        included), the other Ray workers (read and write tasks) and the untouched-file sync's
        short-lived shard check (`python -m vectune.index.verify`)."""
        out: dict[str, float] = {}
        for rss, name in self.by_pid.values():
            role = _role(name)
            out[role] = max(out.get(role, 0.0), round(rss / 2**20, 1))
        return out

    def role_parts(self) -> dict:
        """Per role, the peak of each part of RSS (MiB) over its processes: `anon` (the heap),
        `file` (mapped files) and `shmem` (shared memory: Ray's object store)."""
        out: dict[str, dict[str, float]] = {}
        for pid, parts in self.parts_by_pid.items():
            role = _role(self.by_pid.get(pid, (0, "?"))[1])
            mine = out.setdefault(role, {})
            for key, value in parts.items():
                mine[key] = max(mine.get(key, 0.0), round(value / 2**20, 1))
        return out

    def mib(self) -> dict:
        return {"peak_rss_mib": round(self.peak_total / 2**20, 1),
                "peak_driver_rss_mib": round(self.peak_driver / 2**20, 1),
                "peak_rss_by_role_mib": self.roles(), "peak_rss_parts_by_role_mib": self.role_parts(),
                "cpu_seconds": round(self.cpu_seconds(), 1), "cpu_seconds_by_role": self.cpu_by_role(),
                "rss_at_peak_by_process": self.at_peak}


# -- corpora --------------------------------------------------------------------------
def scifact_slice(folder: Path, n: int | None) -> int:
    """The first `n` SciFact documents (all when None)."""
    count = 0
    with open(SCIFACT, encoding="utf-8") as src, open(folder / "corpus.jsonl", "w", encoding="utf-8") as dst:
        for line in src:
            if n is not None and count >= n:
                break
            if line.strip():
                dst.write(line)
                count += 1
    return count


def synthetic(folder: Path, n: int, seed: int = 0) -> int:
    """`n` short documents (title of 3-8 words, text of 15-60) over a Zipf vocabulary."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "qui", "dor", "len", "bra", "sto"]
    vocab = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(8000)})
    # cumulative weights once (what `choices(vocab, weights)` computes on every call: the same
    # draws, without an 8,000-long sum per document, which made a 1M corpus take many minutes)
    cum = list(itertools.accumulate(1 / (r + 1) for r in range(len(vocab))))
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            title = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(3, 8)))
            text = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(15, 60))) + "."
            fh.write(json.dumps({"_id": f"s{i}", "title": title, "text": text}) + "\n")
    return n


def write_spec(folder: Path, name: str, runs: Path, qdrant: Path, args) -> Path:
    spec = {"version": 1, "name": name, "data": {"corpus": {"path": str(folder / "corpus.jsonl")}},
            "index": {"qdrant": {"path": str(qdrant)}, "concurrency": args.concurrency,
                      "embed_batch_size": args.embed_batch, "batch_size": args.upsert_batch, "keep": 0},
            "runtime": {"runs": str(runs)}}
    if name.endswith("synthetic") and args.synthetic_seq:
        spec["model"] = {"max_seq_length": args.synthetic_seq}
    if args.precision:
        spec.setdefault("model", {})["precision"] = args.precision
    path = folder / f"spec-{runs.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# -- the measurements -----------------------------------------------------------------
class _CountSink:
    """A Datasink that only counts rows: the pipeline's cost without Qdrant."""

    def __new__(cls):
        from ray.data import Datasink

        class CountSink(Datasink):
            def write(self, blocks, ctx):
                from ray.data.block import BlockAccessor

                return sum(BlockAccessor.for_block(b).num_rows() for b in blocks)

            def on_write_complete(self, result):
                self.rows = sum(result.write_returns)

        return CountSink()


def embed_only(spec_path: Path, *, cache: bool = True) -> dict:
    """The re-index's read -> encode pipeline into a sink that drops rows (`cache=False`: cold,
    the embedding cache neither read nor written)."""
    from vectune.data import DomainData
    from vectune.embed import encoder_config, resolve_model
    from vectune.index.stage import corpus_vectors
    from vectune.index.writer import WRITE_TASK_CPUS
    from vectune.spec import load_spec

    spec = load_spec(spec_path)
    data = DomainData(spec)
    n = data.corpus.count
    cfg = encoder_config(spec, resolve_model(spec.model.base), role="document", cache=cache)
    with PeakRSS() as mem:
        start = time.perf_counter()
        ds, blocks = corpus_vectors(spec, data, cfg)
        sink = _CountSink()
        ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_TASK_CPUS}, concurrency=min(blocks, 2))
        seconds = time.perf_counter() - start
    assert sink.rows == n, (sink.rows, n)
    return {"docs": n, "seconds": round(seconds, 2), "docs_per_s": round(n / seconds, 1), **mem.mib()}


def full_reindex(spec_path: Path) -> dict:
    from vectune.embed import resolve_model
    from vectune.index import reindex
    from vectune.runs import Run
    from vectune.spec import load_spec

    spec = load_spec(spec_path)
    run = Run.create(spec, "bench")
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = reindex(spec, run, resolve_model(spec.model.base))
        seconds = time.perf_counter() - start
    return {"points": result["points"], "seconds": round(seconds, 2), "timings": result["timings"], **mem.mib()}


def change_corpus(path: Path, share: float, seed: int) -> dict:
    """Rewrite a corpus file with `share` of its documents changed: half of them modified
    (a sentence appended), a quarter removed, and new documents a quarter as many added
    (another document's text with a sentence appended: new texts, so the cache misses).
    Streamed, line by line, into a file beside it that then replaces it: the process that
    calls it (a benchmark's driver, whose memory is measured) never holds the corpus."""
    with open(path, encoding="utf-8") as fh:
        count = sum(1 for line in fh if line.strip())
    rng = random.Random(seed)
    n = max(4, round(count * share))
    picked = rng.sample(range(count), n // 2 + n // 4)
    modify, remove = set(picked[: n // 2]), set(picked[n // 2:])
    sources = [rng.randrange(count) for _ in range(n // 4)]
    wanted = set(sources)
    found: dict[int, dict] = {}
    kept = 0
    tmp = path.with_name(path.name + ".changing")
    with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as out:
        i = 0
        for line in src:
            if not line.strip():
                continue
            if i in wanted or i in modify:
                r = json.loads(line)
                if i in wanted:
                    found[i] = r
                if i in modify and i not in remove:
                    line = json.dumps({**r, "text": f"{r['text']} Revised in round {seed}."}) + "\n"
            if i not in remove:
                out.write(line if line.endswith("\n") else line + "\n")
                kept += 1
            i += 1
        for j, k in enumerate(sources):
            r = found[k]
            out.write(json.dumps({"_id": f"new-{seed}-{j}", "title": r.get("title", ""),
                                  "text": f"{r['text']} Addendum {seed}-{j}."}) + "\n")
    os.replace(tmp, path)
    return {"modified": len(modify), "removed": len(remove), "added": n // 4, "docs_after": kept + n // 4}


def changed_texts(before: list[str], path: Path) -> list[str]:
    """The texts the sync encodes (title and text, as the corpus reader joins them) of the
    documents in corpus `path` that are new or changed against lines `before`."""
    from vectune.data import doc_text

    old = {r["_id"]: r for r in (json.loads(line) for line in before if line.strip())}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [doc_text(r.get("title"), r.get("text")) for r in rows if old.get(r["_id"]) != r]


def encode_floor(spec_path: Path, texts: list[str]) -> dict:
    """What any sync must pay at least: the model run on the changed texts alone, in this
    process, with no Ray, no Qdrant, no diff (and the model's load, timed apart)."""
    from vectune.embed import Encoder, encoder_config, resolve_model
    from vectune.spec import load_spec

    spec = load_spec(spec_path)
    start = time.perf_counter()
    encoder = Encoder(encoder_config(spec, resolve_model(spec.model.base), role="document", cache=False))
    encoder.encode(texts[:1])
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    encoder.encode(texts)
    return {"texts": len(texts), "load_seconds": round(loaded, 2), "encode_seconds": round(time.perf_counter() - start, 2)}


def _timed_reindex(spec_path: Path, run_id: str, *, full: bool) -> dict:
    from vectune.embed import resolve_model
    from vectune.index import reindex
    from vectune.runs import Run
    from vectune.spec import load_spec

    spec = load_spec(spec_path)  # a fresh DomainData: the corpus file is checked and hashed inside the clock
    run = Run.create(spec, run_id)
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = reindex(spec, run, resolve_model(spec.model.base), full=full)
        seconds = time.perf_counter() - start
    keep = ("mode", "reason", "points", "written", "added", "updated", "deleted", "unchanged", "timings")
    return {"seconds": round(seconds, 2), **{k: result.get(k) for k in keep},
            "peak_rss_mib": mem.mib()["peak_rss_mib"], "peak_driver_rss_mib": mem.mib()["peak_driver_rss_mib"]}


def sync_vs_full(folder: Path, args) -> dict:
    """A nightly job's two choices side by side, from the same warm embedding cache:
    sync in place vs full re-index, with `--change` of the corpus changed, then unchanged.

    One collection is built first (cold cache, untimed for the ratios). Its cache is copied
    for the full side, so each side meets the changed documents uncached, as a nightly job
    does. The sync side and the full side share the Qdrant store (the full side adds a
    version, as in production); the alias serves whichever ran last, and both runs compare
    the same corpus.
    """
    corpus = folder / "corpus.jsonl"
    store = folder / "qdrant-sync"
    name = f"sync-{folder.name}"  # ends with the corpus kind, as write_spec expects
    sync_spec = write_spec(folder, name, folder / "runs-sync-a", store, args)
    full_spec = write_spec(folder, name, folder / "runs-sync-b", store, args)
    out: dict = {"first_build": _timed_reindex(sync_spec, "first", full=True)}
    shutil.copytree(folder / "runs-sync-a" / "_cache", folder / "runs-sync-b" / "_cache")

    before = corpus.read_text(encoding="utf-8").splitlines()
    out["change"] = change_corpus(corpus, args.change, seed=1)
    out["sync_changed"] = _timed_reindex(sync_spec, "sync-changed", full=False)
    out["encode_floor"] = encode_floor(sync_spec, changed_texts(before, corpus))
    out["full_changed"] = _timed_reindex(full_spec, "full-changed", full=True)
    out["sync_unchanged"] = _timed_reindex(sync_spec, "sync-unchanged", full=False)
    lines = corpus.read_text(encoding="utf-8").splitlines()
    corpus.write_text("".join(line + "\n" for line in lines[::-1]), encoding="utf-8")  # same documents, new file hash
    out["sync_unchanged_reordered"] = _timed_reindex(sync_spec, "sync-reordered", full=False)
    out["full_unchanged"] = _timed_reindex(full_spec, "full-unchanged", full=True)
    for key in ("sync_changed", "sync_unchanged", "sync_unchanged_reordered"):
        assert out[key]["mode"] == "incremental", out[key]
    full_c, full_u = out["full_changed"]["seconds"], out["full_unchanged"]["seconds"]
    out["ratio_sync_vs_full_changed"] = round(out["sync_changed"]["seconds"] / full_c, 4)
    out["ratio_sync_vs_full_unchanged"] = round(out["sync_unchanged"]["seconds"] / full_u, 4)
    out["ratio_sync_vs_full_unchanged_reordered"] = round(out["sync_unchanged_reordered"]["seconds"] / full_u, 4)
    # the least a sync with this change could take, against the same full re-index: encoding
    # the changed documents alone (the model already loaded), and with the model's load
    floor = out["encode_floor"]
    out["ratio_floor_encode_vs_full_changed"] = round(floor["encode_seconds"] / full_c, 4)
    out["ratio_floor_load_and_encode_vs_full_changed"] = round(
        (floor["load_seconds"] + floor["encode_seconds"]) / full_c, 4)
    return out


def _vectors_dataset(spec_path: Path):
    """The corpus with random unit vectors, materialised in the object store (no model)."""
    from vectune.data import DomainData
    from vectune.spec import load_spec

    def add(batch):
        rng = np.random.default_rng(len(batch["doc_id"]))
        v = rng.normal(size=(len(batch["doc_id"]), DIM)).astype(np.float32)
        batch["embedding"] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return batch

    data = DomainData(load_spec(spec_path))
    return data.corpus_dataset(blocks=max(2, data.corpus.count // 1024)).map_batches(
        add, batch_format="numpy", num_cpus=0.1).materialize()


def _fresh_collection(store, name: str) -> None:
    from vectune.index.store import Layout

    store.create(name, Layout(size=DIM, distance="cosine"), stamp={"bench": True})


def upsert_only(spec_path: Path, work: Path, batch_sizes: list[int], upsert_batch: int, repeat: int) -> dict:
    """vectune's writer vs plain Qdrant Edge upserts in one process, same vectors, same folder kind.

    Both start from the same columns (doc ids, vectors, payload fields). vectune's path is what
    `reindex` does on the embedded engine: Ray write tasks prepare requests and send them to the
    owner actor, which holds the shard. The baseline is `EdgeShard.update(upsert_points(...))`
    called in this process, timed twice: the update calls alone (points built beforehand,
    untimed: its best case) and building the points plus the updates (what a caller has to do).
    """
    import ray
    import qdrant_edge as qe

    from vectune.index.points import point_id
    from vectune.index.store import Target
    from vectune.index.writer import WRITE_TASK_CPUS, StoreDatasink, start_owner

    ds = _vectors_dataset(spec_path)
    n = ds.count()
    fields = ["doc_id", "text", "title"]

    # vectune: write tasks -> the engine's owner actor (what `reindex` does on the embedded engine)
    ours, busy = [], []
    with PeakRSS() as mem:
        for i in range(repeat):
            where = Target(path=str(work / f"q-vectune-{i}"))
            owner = start_owner(where)
            _fresh_collection(owner, "bench")
            start = time.perf_counter()
            sink = StoreDatasink("bench", handle=owner, batch_size=upsert_batch, payload=fields)
            ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_TASK_CPUS}, concurrency=2)
            ours.append(time.perf_counter() - start)
            busy.append(ray.get(owner.actor.stats.remote())["busy_seconds"] / ours[-1])
            assert owner.count("bench") == n
            owner.close()
            shutil.rmtree(where.path, ignore_errors=True)

    rows = [r for b in ds.iter_batches(batch_format="numpy", batch_size=4096)
            for r in zip(b["doc_id"], b["title"], b["text"], b["embedding"])]

    def baseline(bs: int) -> tuple[float, float]:
        path = work / f"q-edge-{bs}"
        shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)}))
        built = time.perf_counter()
        points = [qe.Point(point_id(d), {"dense": v.tolist()}, {"doc_id": str(d), "title": str(t), "text": str(x)})
                  for d, t, x, v in rows]
        start = time.perf_counter()
        for a in range(0, len(points), bs):
            shard.update(qe.UpdateOperation.upsert_points(points[a:a + bs]))
        end = time.perf_counter()
        assert shard.count(qe.CountRequest(exact=True)) == n
        shard.close()
        shutil.rmtree(path, ignore_errors=True)
        return round(n / (end - start), 1), round(n / (end - built), 1)

    upsert_alone, with_build = {}, {}
    for bs in batch_sizes:
        key = f"edge_upsert(batch_size={bs})"
        upsert_alone[key], with_build[key] = baseline(bs)
    best = max(upsert_alone, key=upsert_alone.get)
    best_built = max(with_build, key=with_build.get)
    rate = n / min(ours)
    return {"points": n, "store": str(work), "vectune_points_per_s": round(rate, 1),
            "vectune_seconds": [round(x, 2) for x in ours],
            "owner_busy_fraction": [round(x, 3) for x in busy],
            "edge_upsert_only": upsert_alone, "edge_build_and_upsert": with_build,
            "best_upsert_only": best, "ratio_vs_best_upsert_only": round(rate / upsert_alone[best], 3),
            "best_build_and_upsert": best_built,
            "ratio_vs_best_build_and_upsert": round(rate / with_build[best_built], 3),
            **mem.mib()}


def bench_corpus(label: str, make, args, work: Path) -> dict:
    folder = work / label
    folder.mkdir()
    n = make(folder)
    print(f"[{label}] {n} documents", file=sys.stderr, flush=True)
    out: dict = {"docs": n}
    spec_a = write_spec(folder, f"bench-{label}", folder / "runs-embed", folder / "qdrant-embed", args)
    spec_b = write_spec(folder, f"bench-{label}", folder / "runs-full", folder / "qdrant-full", args)
    if "embed" in args.phases:
        out["embed_only"] = embed_only(spec_a)
        print(f"[{label}] embed-only {out['embed_only']}", file=sys.stderr, flush=True)
    if "full" in args.phases:
        out["full_reindex"] = full_reindex(spec_b)
        print(f"[{label}] full re-index {out['full_reindex']}", file=sys.stderr, flush=True)
    if "embed_only" in out and "full_reindex" in out:
        e, f = out["embed_only"]["seconds"], out["full_reindex"]
        out["ratio_load_vs_embed_only"] = round(f["timings"]["load"] / e, 3)
        out["ratio_total_vs_embed_only"] = round(f["seconds"] / e, 3)
        # CPU seconds of driver + Ray: what upserting and verifying add, whatever the contention
        out["ratio_cpu_vs_embed_only"] = round(f["cpu_seconds"] / max(out["embed_only"]["cpu_seconds"], 1e-9), 3)
    if "sync" in args.phases:
        out["sync_vs_full"] = sync_vs_full(folder, args)
        print(f"[{label}] sync vs full {json.dumps(out['sync_vs_full'])}", file=sys.stderr, flush=True)
    if "upsert" in args.phases:
        out["upsert_only"] = upsert_only(spec_b, folder, args.baseline_batches, args.upsert_batch, args.repeat)
        print(f"[{label}] upsert-only {out['upsert_only']}", file=sys.stderr, flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _encoders(full: dict) -> tuple[int, float]:
    """(encoder actors alive at the peak, MiB each)."""
    for name, entry in full.get("rss_at_peak_by_process", {}).items():
        if "Encoder" in name:
            return entry["procs"], round(entry["rss_mib"] / entry["procs"], 1)
    return 0, 0.0


def memory_scaling(small_n: int, small: dict, big_n: int, big: dict) -> dict:
    """Peak memory of the same kind of corpus at two sizes, total and per process.

    The total also counts how many encoder actors had loaded the model at the peak (they
    load it on their first batch): a corpus of one Ray batch keeps one actor busy, so
    compare per-actor memory too.
    """
    actors = [_encoders(small), _encoders(big)]
    return {
        "docs": [small_n, big_n],
        "docs_ratio": round(big_n / small_n, 2),
        "peak_rss_mib": [small["peak_rss_mib"], big["peak_rss_mib"]],
        "peak_rss_ratio": round(big["peak_rss_mib"] / small["peak_rss_mib"], 3),
        "peak_driver_rss_mib": [small["peak_driver_rss_mib"], big["peak_driver_rss_mib"]],
        "encoder_actors_at_peak": [a[0] for a in actors],
        "rss_per_encoder_actor_mib": [a[1] for a in actors],
    }


def role_scaling(sizes: list[int], runs: list[dict]) -> dict:
    """Each role's peak RSS at both sizes and their ratio, and the sum of the role peaks less
    the embedded engine's own vectors (points x 384 float32, held by the writer)."""
    roles = sorted(set(runs[0]["peak_rss_by_role_mib"]) | set(runs[1]["peak_rss_by_role_mib"]))
    out: dict = {"docs": sizes}
    for role in roles:
        small, big = (r["peak_rss_by_role_mib"].get(role, 0.0) for r in runs)
        out[role] = {"peak_rss_mib": [small, big], "ratio": round(big / small, 3) if small else None}
    vectors = [round(n * DIM * 4 / 2**20, 1) for n in sizes]
    out["engine_vectors_mib"] = vectors
    if "writer" in out:
        less = [round(w - v, 1) for w, v in zip(out["writer"]["peak_rss_mib"], vectors)]
        out["writer_less_vectors"] = {"peak_rss_mib": less, "ratio": round(less[1] / less[0], 3) if less[0] else None}
    counted = ("driver", "encoder_actor", "writer")
    out["sum_driver_actors_writer_less_vectors_mib"] = [
        round(sum(r["peak_rss_by_role_mib"].get(role, 0.0) * (r["encoder_actors"] if role == "encoder_actor" else 1)
                  for role in counted) - v, 1) for r, v in zip(runs, vectors)]
    return out


def memory_only(args, argv: list[str]) -> None:
    results: dict = {"benchmark": "reindex-memory", "host": platform.node(), "cpus": os.cpu_count(),
                     "load_average_start": [round(x, 2) for x in os.getloadavg()],
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                  if k not in ("one", "child_out")},
                     "corpora": {}}
    runs = []  # (the children see --memory-sizes too, and ignore it: --one comes first)
    for n in args.memory_sizes:
        full = _spawn("synthetic", n, "full", argv)["full_reindex"]
        full["encoder_actors"] = _encoders(full)[0] or args.concurrency
        results["corpora"][f"synthetic_{n}"] = full
        runs.append(full)
        print(f"[memory] {n} documents: {full['seconds']} s, roles {full['peak_rss_by_role_mib']}",
              file=sys.stderr, flush=True)
    results["memory_scaling"] = role_scaling(list(args.memory_sizes), runs)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _one(args) -> None:
    """Child process: one corpus, with its own Ray, so peak memory and model residue of one
    corpus never leak into the next."""
    from vectune.runtime import init_ray
    from vectune.spec.runtime import RuntimeSpec

    logging.basicConfig(level=logging.WARNING)
    os.environ["RAY_worker_niceness"] = str(args.ray_niceness)  # read by the raylet Ray starts below
    init_ray(RuntimeSpec(num_cpus=args.cpus))
    kind, n = args.one
    n = int(n)
    where = args.qdrant_dir or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="vectune-bench-", dir=where))
    make = (lambda f: scifact_slice(f, n or None)) if kind == "scifact" else (lambda f: synthetic(f, n))
    try:
        result = bench_corpus(kind, make, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.child_out.write_text(json.dumps(result))


def _spawn(kind: str, n: int, phases: str, argv: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, __file__, *argv, "--phases", phases, "--one", kind, str(n), "--child-out", str(out)]
    subprocess.run(cmd, check=True)
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="SciFact 1,000 docs + synthetic 5,000 (and 1,000 for (d)).")
    ap.add_argument("--docs", type=int, default=None, help="SciFact documents (default: all 5,183).")
    ap.add_argument("--synthetic", type=int, default=None, help="Synthetic documents (default 50,000).")
    ap.add_argument("--skip-scifact", action="store_true")
    ap.add_argument("--synthetic-seq", type=int, default=None,
                    help="model.max_seq_length for the synthetic corpus: shorter sequences encode faster, so "
                         "the upserts weigh more in (b) and a 50,000-document pass fits in minutes")
    ap.add_argument("--phases", default="embed,full,upsert",
                    help="Comma-separated subset of embed (a), full (b), upsert (c), sync (e).")
    ap.add_argument("--change", type=float, default=0.01,
                    help="(e): share of the corpus changed between the runs (half modified, a quarter added, "
                         "a quarter removed).")
    ap.add_argument("--concurrency", type=int, default=2, help="Encoder actors.")
    ap.add_argument("--embed-batch", type=int, default=1024, help="Documents per Ray batch handed to encode.")
    ap.add_argument("--upsert-batch", type=int, default=256, help="Points per upsert request.")
    ap.add_argument("--repeat", type=int, default=2, help="Runs of vectune's writer in (c); the best counts.")
    ap.add_argument("--baseline-batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--cpus", type=int, default=None, help="CPUs for the local Ray (default: all).")
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8"], default=None,
                    help="model.precision of every spec (default: the spec default, auto: fp32 on CPUs).")
    ap.add_argument("--memory-sizes", type=int, nargs=2, metavar=("SMALL", "BIG"), default=None,
                    help="(d) only: a full re-index of synthetic corpora of these two sizes, each in its own "
                         "process, and the peak RSS of each role compared between them (issue 18: 50000 500000).")
    ap.add_argument("--qdrant-dir", default=None,
                    help="Folder for the work files and Qdrant stores (default /dev/shm, tmpfs); a folder on "
                         "disk measures what the default `<runs>/qdrant` store sees.")
    ap.add_argument("--ray-niceness", type=int, default=0,
                    help="Niceness of Ray workers (Ray's default is 15). 0 puts them on par with the in-process "
                         "Qdrant Edge baseline on a shared machine.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reindex.json")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return _one(args)
    if args.quick:
        args.docs = args.docs or 1000
        args.synthetic = args.synthetic or 5000
    synthetic_n = args.synthetic or 50_000
    small_n = max(200, synthetic_n // 5)  # (d): the same kind of corpus at a fifth of the size
    argv = [a for a in sys.argv[1:]]
    if "--phases" in argv:
        i = argv.index("--phases")
        del argv[i:i + 2]

    if args.memory_sizes:
        return memory_only(args, argv)

    results: dict = {
        "benchmark": "reindex", "host": platform.node(), "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "ray_worker_niceness": args.ray_niceness,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("one", "child_out")},
        "corpora": {},
    }
    if not args.skip_scifact:
        results["corpora"]["scifact"] = _spawn("scifact", args.docs or 0, args.phases, argv)
    results["corpora"]["synthetic"] = _spawn("synthetic", synthetic_n, args.phases, argv)
    if "full" in args.phases and "sync" not in args.phases:
        results["corpora"][f"synthetic_{small_n}"] = _spawn("synthetic", small_n, "full", argv)
        big = results["corpora"]["synthetic"]["full_reindex"]
        small = results["corpora"][f"synthetic_{small_n}"]["full_reindex"]
        results["memory_scaling"] = memory_scaling(small_n, small, synthetic_n, big)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
