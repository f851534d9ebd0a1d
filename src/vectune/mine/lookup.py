"""Streaming passes over the corpus that bring back only what the driver asked for.

The corpus is never collected: each pass filters a Ray Dataset to a set of document ids
(shipped once through the object store) and returns, per kept document, the hash of its
normalised text and, for the few ids whose text is wanted, the text itself. With a
cross-encoder, the same pass rescores each kept document against the queries that have
it as a candidate, in a pool of actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vectune.embed.cache import text_hashes
from vectune.mine.select import text_key


@dataclass
class DocFacts:
    """What a pass learnt about the documents it kept."""

    keys: dict[str, int] = field(default_factory=dict)  # doc id -> text_key (normalised text)
    vkeys: dict[str, int] = field(default_factory=dict)  # doc id -> its embedding-cache key
    texts: dict[str, str] = field(default_factory=dict)  # only the ids whose text was wanted
    cross: dict[tuple[int, str], float] = field(default_factory=dict)  # (query index, doc id) -> score


def _facts_table(ids: list[str], texts: list[str], want_text, prefix: str) -> dict[str, list]:
    return {
        "doc_id": ids,
        "key": [text_key(t) for t in texts],
        "vkey": text_hashes([prefix + t for t in texts]).tolist(),
        "text": [t if d in want_text else None for d, t in zip(ids, texts)],
    }


def _schema(cross: bool) -> pa.Schema:
    fields = [("doc_id", pa.string()), ("key", pa.uint64()), ("vkey", pa.uint64()), ("text", pa.string())]
    if cross:
        fields += [("q", pa.list_(pa.int32())), ("s", pa.list_(pa.float32()))]
    return pa.schema(fields)


def _keep(batch: pa.Table, wanted) -> tuple[list[str], list[str]]:
    ids = batch.column("doc_id").to_pylist()
    texts = batch.column("text").to_pylist()
    rows = [(d, t) for d, t in zip(ids, texts) if d in wanted]
    return [d for d, _ in rows], [t for _, t in rows]


def _filter_batch(batch: pa.Table, refs: list, prefix: str) -> pa.Table:
    """Ray Data UDF: keep the wanted ids; hash their text; keep texts only where asked."""
    import ray

    wanted, want_text = ray.get(refs[0]), ray.get(refs[1])
    ids, texts = _keep(batch, wanted)
    return pa.table(_facts_table(ids, texts, want_text, prefix), schema=_schema(False))


class _CrossScorer:
    """Ray Data UDF (actor): like `_filter_batch`, plus cross-encoder scores of each kept
    document against the queries (by index) that list it in `pairs`."""

    def __init__(self, model_path: str, refs: list, batch_size: int, threads: int | None, prefix: str):
        import ray
        import torch
        from sentence_transformers import CrossEncoder

        if threads:
            torch.set_num_threads(threads)
        self.wanted, self.want_text, self.pairs, self.queries = (ray.get(r) for r in refs)
        self.model = CrossEncoder(model_path)
        self.batch_size = batch_size
        self.prefix = prefix

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, texts = _keep(batch, self.wanted)
        qs = [self.pairs.get(d, []) for d in ids]
        flat = [(self.queries[q], t) for q_list, t in zip(qs, texts) for q in q_list]
        scores = (
            np.asarray(self.model.predict(flat, batch_size=self.batch_size, show_progress_bar=False),
                       dtype=np.float32).reshape(-1)
            if flat else np.zeros(0, dtype=np.float32)
        )
        out, start = [], 0
        for q_list in qs:
            out.append(scores[start : start + len(q_list)].tolist())
            start += len(q_list)
        table = _facts_table(ids, texts, self.want_text, self.prefix)
        table.update(q=qs, s=out)
        return pa.table(table, schema=_schema(True))


def gather(data, wanted: set[str], want_text: set[str], *, prefix: str = "", blocks: int | None = None,
           cross: dict | None = None) -> DocFacts:
    """One streaming pass over the corpus, returning facts about `wanted` ids only.

    Args:
        data: the DomainData.
        wanted: ids to keep (their text hash is returned).
        want_text: ids (a subset of `wanted`) whose text comes back too.
        prefix: the document prefix, for the embedding-cache keys.
        blocks: read parallelism.
        cross: when rescoring: {"model": path, "pairs": {doc id: [query index]},
            "queries": [query text], "batch_size": int, "actors": ActorPlan}.
    """
    import ray
    from ray.data import ActorPoolStrategy

    ds = data.corpus_dataset(blocks=blocks)
    refs = [ray.put(wanted), ray.put(want_text)]
    if cross is None:
        # a CPU sliver: this pass may run next to encoder actors holding the rest
        ds = ds.map_batches(_filter_batch, fn_kwargs={"refs": refs, "prefix": prefix}, batch_format="pyarrow",
                            num_cpus=0.1)
    else:
        plan = cross["actors"]
        refs += [ray.put(cross["pairs"]), ray.put(cross["queries"])]
        ds = ds.map_batches(
            _CrossScorer,
            fn_constructor_kwargs={"model_path": cross["model"], "refs": refs,
                                   "batch_size": cross["batch_size"], "threads": plan.threads, "prefix": prefix},
            batch_format="pyarrow",
            batch_size=256,
            compute=ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.cpus,
        )
    facts = DocFacts()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pydict()
        for i, doc_id in enumerate(rows["doc_id"]):
            facts.keys[doc_id] = int(rows["key"][i])
            facts.vkeys[doc_id] = int(rows["vkey"][i])
            if rows["text"][i] is not None:
                facts.texts[doc_id] = rows["text"][i]
            if cross is not None:
                for q, s in zip(rows["q"][i], rows["s"][i]):
                    facts.cross[(q, doc_id)] = float(s)
    return facts
