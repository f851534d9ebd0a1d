"""Checks a new collection passes before the alias may move to it.

1. its point count equals the corpus document count;
2. every point has its dense vector and its `doc_id` (`check_integrity`: counts the engine
   answers from its own storage, so a truncated or corrupted segment file, which Qdrant Edge
   may load without complaint and then serve points without vectors, is refused);
3. its point ids are exactly the corpus ids (an order-free checksum over a scroll of ids
   only, constant memory), so there is no duplicate, stale or missing point;
4. a sample of points is present with the right `doc_id`;
5. their stored vectors match a fresh embedding of the same documents (cosine > 0.999),
   computed without the embedding cache, so a stale cache or a mix-up of models cannot pass:
   by the model the caller already holds when it encoded in this process (a small corpus),
   else as `vectune.embed.apart` decides (a Ray task for a driver without the model). A
   vector the load's encoders computed themselves as the document passed (not read from the
   cache) is such a fresh embedding already: the same model gives the same floats again, so
   a cold re-index checks its sample against those and loads the model nowhere else.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np

from vectune.data import DomainData
from vectune.embed import Encoder, apart, encoder_config
from vectune.embed.encoder import unit_rows
from vectune.errors import IndexingError
from vectune.index.points import id_checksum, point_id, sample_key
from vectune.index.store import DENSE, MEMORY, PAGE, Store
from vectune.spec import Spec

log = logging.getLogger(__name__)

MIN_COSINE = 0.999


def scroll_ids(store: Store, name: str, *, page: int = PAGE):
    """Every point id of a collection, page by page (no payloads, no vectors)."""
    for records in store.scroll(name, None, page=page):
        for r in records:
            yield r.id


def check_integrity(store: Store, name: str) -> int:
    """The point count of `name`, after checking that its storage loads and every point has its
    dense vector and its `doc_id` payload; IndexingError otherwise."""
    points = store.count(name)
    _intact(name, points, with_vector=store.count(name, has_vector=DENSE))
    _intact(name, points, with_doc_id=store.count(name, has_field="doc_id"))
    return points


def _intact(name: str, points: int, *, with_vector: int | None = None, with_doc_id: int | None = None) -> None:
    if with_vector is not None and with_vector != points:
        raise IndexingError(f"{name} is damaged: {points - with_vector} of its {points} points have no stored "
                            "vector (a truncated or corrupted segment file?)")
    if with_doc_id is not None and with_doc_id != points:
        raise IndexingError(f"{name} is damaged: {points - with_doc_id} of its {points} points have no doc_id "
                            "payload")


def sample_ids(ids, k: int, seed: str) -> list[str]:
    """`k` ids drawn from `ids` (any iterable, read once), uniformly and reproducibly for `seed`,
    holding only k of them: the k smallest keyed hashes of (seed, id)."""
    def key(d: str) -> bytes:
        return sample_key(seed, d)

    return sorted(heapq.nsmallest(k, (str(d) for d in ids), key=key), key=key)


def _pick_rows(batch: dict, wanted: frozenset) -> dict:
    keep = np.array([d in wanted for d in batch["doc_id"]], dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def sample_texts(data: DomainData, doc_ids: list[str]) -> dict[str, str]:
    """Texts of a few documents, found by the Ray workers: the driver sees only those."""
    wanted = frozenset(doc_ids)
    ds = data.corpus_dataset().map_batches(_pick_rows, fn_kwargs={"wanted": wanted}, batch_format="numpy",
                                           num_cpus=0.1)
    return {str(r["doc_id"]): str(r["text"]) for r in ds.take_all()}


def verify(store: Store, name: str, spec: Spec, data: DomainData, model_path: str, *, seed: str,
           encoder: Encoder | None = None, sample: dict[str, str] | None = None,
           computed: dict[str, np.ndarray] | None = None,
           expected: tuple[int, tuple[int, int]] | None = None, scanned: tuple[int, int] | None = None) -> dict:
    """Raise IndexingError unless collection `name` holds exactly the corpus, embedded by
    `model_path`. Returns what was checked.

    `encoder` (optional) is an uncached document encoder of `model_path` (loaded or not).
    `sample` ({doc_id: text}) names the documents whose vectors are checked (a sync passes
    some of the changed ones, possibly none); by default `index.verify_sample` documents
    drawn from the corpus, their texts found by Ray workers. When `encoder` (or the encoder it
    is the uncached twin of) was built with `remember` and ran the model in this process on
    some of those texts, its vectors are fresh embeddings already (the same loaded model would
    give the same floats again), so only the sampled documents it did not compute, e.g. ones
    it found in the cache, are encoded again. `computed` ({doc_id: vector}): the sampled
    documents' vectors the load's encoders computed by the model as they passed
    (`writer.Written.fresh`), fresh embeddings likewise. `expected` and `scanned`: as
    `verify_ids` takes them.
    """
    got, checksum = verify_ids(store, name, data, expected=expected, scanned=scanned)
    ids = sample_ids(data.corpus.ids, spec.index.verify_sample, seed) if sample is None else list(sample)
    if not ids:
        log.info("verified %s: %d points, ids match, no vector to sample", name, got)
        return {"points": got, "ids_checksum": True, "id_checksum": checksum_text(checksum), "sampled": 0,
                "min_cosine": None}
    # one read: the writer that verifies holds no more than one shard for it
    points = store.retrieve(name, [point_id(d) for d in ids], ["doc_id"], vectors=True, keep_open=False)
    by_doc = {p.payload.get("doc_id"): p for p in points}
    missing = [d for d in ids if d not in by_doc]
    if missing:
        raise IndexingError(f"{name} misses sampled documents {missing[:5]}")
    texts = sample_texts(data, ids) if sample is None else sample
    known = {d: encoder.computed_vector(texts[d]) for d in ids} if encoder is not None else {}
    known.update({d: computed[d] for d in ids if computed and d in computed})
    redo = [d for d in ids if known.get(d) is None]
    if redo:
        cfg = encoder_config(spec, model_path, role="document", cache=False)
        todo = [texts[d] for d in redo]
        again = apart.fresh_vectors(cfg, todo, encoder, spec.index.num_gpus)
        known.update(zip(redo, again))
    fresh = np.asarray([known[d] for d in ids], dtype=np.float32)
    empty = [d for d in ids if by_doc[d].vector is None]
    if empty:
        raise IndexingError(f"{name}: sampled documents {empty[:5]} have no stored vector")
    stored = np.asarray([by_doc[d].vector for d in ids], dtype=np.float32)
    cos = np.sum(unit_rows(fresh) * unit_rows(stored), axis=1)
    worst = int(np.argmin(cos))
    if cos[worst] < MIN_COSINE:
        raise IndexingError(f"{name}: the stored vector of document {ids[worst]!r} does not match a fresh embedding "
                            f"by {model_path} (cosine {cos[worst]:.4f} < {MIN_COSINE})")
    log.info("verified %s: %d points, ids match, %d sampled vectors (min cosine %.5f; %d encoded again)", name, got,
             len(ids), float(cos[worst]), len(redo))
    return {"points": got, "ids_checksum": True, "id_checksum": checksum_text(checksum), "sampled": len(ids),
            "min_cosine": round(float(cos[worst]), 6),
            "encoded_again": len(redo)}


def verify_ids(store: Store, name: str, data: DomainData, *, apart: bool = False,
               expected: tuple[int, tuple[int, int]] | None = None,
               scanned: tuple[int, int] | None = None) -> tuple[int, tuple[int, int]]:
    """(point count, `id_checksum`) of `name`, after checking its integrity and that its point ids
    are exactly the corpus ids.

    The ids are checksummed where the points are: by the owner actor beside its shard, by a
    scroll from here for a server, and with `apart` for the embedded engine opened in this
    process, by a child process (`shard_ids`): Qdrant Edge maps a shard's files into the process
    that opens it, and the pages it reads count in that process's memory, so a driver that only
    checks a shard leaves that to a process that exits.

    `expected`: (count, `id_checksum`) of the corpus ids when they are known without reading the
    corpus (a file byte for byte the one a verified stamp records); by default from `data`.
    `scanned`: the `id_checksum` of the collection's ids as its writer just scanned them (a sync:
    the scroll that found the gone points, less those it then deleted), so they are not scrolled
    a second time; its count and integrity are still checked here.
    """
    want = expected[1] if expected is not None else None
    expected = expected[0] if expected is not None else data.corpus.count
    if scanned is not None:
        got, have = _counted(store, name, expected), scanned
    elif apart and store.where.embedded and store.where.path != MEMORY and not hasattr(type(store), "id_checksum"):
        got, have = _in_child(store.where.path, name, expected)
    else:
        got, have = _counted_ids(store, name, expected)
    if want is None:
        want = id_checksum(point_id(d) for d in data.corpus.ids)
    if tuple(want) != tuple(have):
        raise IndexingError(f"{name} holds {have[0]} points whose ids do not match the corpus document ids")
    return got, tuple(have)


def checksum_text(checksum: tuple[int, int]) -> str:
    """An `id_checksum` as stamped: `<count>:<sum as 32 hex digits>` (a server keeps collection
    metadata as JSON, whose integers stop at 64 bits)."""
    return f"{checksum[0]}:{checksum[1]:032x}"


def checksum_of(text: str | None) -> tuple[int, int] | None:
    """`checksum_text` read back; None for a stamp without one."""
    if not text or ":" not in str(text):
        return None
    count, total = str(text).split(":", 1)
    return int(count), int(total, 16)


def _counted(store: Store, name: str, expected: int) -> int:
    """The point count of `name`, after checking it is `expected` and its integrity."""
    if hasattr(type(store), "census"):  # the embedded engine: one walk over its shards
        return _census(store, name, expected)[0]
    got = store.count(name)
    if got != expected:
        raise IndexingError(f"{name} holds {got} points but the corpus has {expected} documents")
    check_integrity(store, name)
    return got


def _counted_ids(store: Store, name: str, expected: int) -> tuple[int, tuple[int, int]]:
    """(points, id checksum) of `name`, after checking it holds `expected` points and its
    integrity. An owner actor checksums its shard's ids itself; other stores are scrolled here."""
    if hasattr(type(store), "census"):
        return _census(store, name, expected)
    got = _counted(store, name, expected)
    return got, store.id_checksum(name) if hasattr(type(store), "id_checksum") else id_checksum(scroll_ids(store, name))


def _census(store: Store, name: str, expected: int) -> tuple[int, tuple[int, int]]:
    """`_counted_ids` from one `census` of the embedded engine (each shard opened once)."""
    got = store.census(name)
    points = got["points"]
    if points != expected:
        raise IndexingError(f"{name} holds {points} points but the corpus has {expected} documents")
    _intact(name, points, with_vector=got["with_vector"], with_doc_id=got["with_doc_id"])
    return points, tuple(got["id_checksum"])


def shard_ids(where, name: str, expected: int) -> tuple[int, tuple[int, int]]:
    """`_counted_ids` of collection `name` at `where`, opening the store in this process (run in
    a child by `verify_ids`)."""
    from vectune.index.engines import open_store

    store = open_store(where)
    try:
        return _counted_ids(store, name, expected)
    finally:
        store.close()


def _in_child(path: str, name: str, expected: int) -> tuple[int, tuple[int, int]]:
    """`shard_ids` of the embedded store at `path`, in a fresh Python process running this module
    (`python -m vectune.index.verify`: not multiprocessing's spawn, which re-runs the caller's
    main script in the child). Its IndexingError is raised here with the child's message, and a
    child that dies (a panicking engine) is one too."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import vectune

    env = dict(os.environ)
    # the package this process imported, whether installed or on a path added at run time
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(vectune.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "vectune.index.verify", path, name, str(expected)],
                          capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if proc.returncode in (0, 3) and lines else None
    if answer is None:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])
        raise IndexingError(f"checking {name!r}: the process reading its shard died (exit code {proc.returncode}"
                            f"{': ' + tail if tail else ''}; a corrupted segment file?)")
    if "error" in answer:
        raise IndexingError(answer["error"])
    return int(answer["points"]), (int(answer["checksum"][0]), int(answer["checksum"][1], 16))


def _main(argv: list[str]) -> int:
    """The child of `_in_child`: one JSON line on stdout, exit code 0, or 3 with the refusal."""
    import json

    from vectune.index.store import Target

    path, name, expected = argv
    try:
        points, (count, total) = shard_ids(Target(path=path), name, int(expected))
    except IndexingError as exc:
        print(json.dumps({"error": str(exc)}))
        return 3
    print(json.dumps({"points": points, "checksum": [count, f"{total:x}"]}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
