"""Collection versions behind one alias: names, stamps, the atomic swap, retention, rollback.

Each re-index builds `<base>__<run_id>`; readers query the alias. A collection's stamp (the
version record beside an Edge shard, a server collection's metadata under `vectune`) says which
model and spec built it and where it is in its life: `building` -> `ready` (verified) -> possibly
`rolled_back`; `failed` when verification refused it. The alias only ever moves in one atomic
step of the store (`Store.swap_alias`). Everything here goes through `vectune.index.store.Store`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from vectune.errors import IndexingError, ModelError
from vectune.spec import Spec

log = logging.getLogger(__name__)

SEP = "__"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def base_name(spec: Spec) -> str:
    """The collection base name: `index.collection`, else the spec's name."""
    return spec.index.collection or spec.name


def alias_name(spec: Spec) -> str:
    """The alias readers query: `index.alias`, else the base name."""
    return spec.index.alias or base_name(spec)


def collection_name(spec: Spec, run_id: str) -> str:
    return f"{base_name(spec)}{SEP}{run_id}"


# -- stamps ---------------------------------------------------------------------------
def read_stamp(store, name: str) -> dict | None:
    """The vectune stamp of a collection, or None (not ours, or not stamped)."""
    return store.read_stamp(name)


def write_stamp(store, name: str, stamp: dict) -> None:
    store.write_stamp(name, stamp)


def update_stamp(store, name: str, **changes) -> dict:
    stamp = store.read_stamp(name) or {}
    stamp.update(changes)
    store.write_stamp(name, stamp)
    return stamp


#: stamp fields that decide the vectors and payloads: a live collection whose stamp matches
#: what a build would write now can be synced in place (`vectune.index.sync`)
SYNC_FIELDS = ("format", "model_fingerprint", "precision", "int8_recipe", "document_prefix", "max_seq_length",
               "normalize", "distance", "payload", "sparse")
#: stamp format 3: named vectors, `dense` (and optionally a `bm25` sparse one); format 2 had one
#: unnamed vector; format 1 points carried no `text_hash` payload
FORMAT = 3


def full_build_reason(stamp: dict | None, wanted: dict, *, size: int | None = None,
                      distance: str | None = None) -> str | None:
    """Why the live collection cannot be synced in place, or None when it can.

    `wanted` holds the `SYNC_FIELDS` a build would stamp now; `size` and `distance` are the
    live collection's own vector settings (checked against its stamp).
    """
    if stamp is None:
        return "no collection is live (or it carries no vectune stamp)"
    if stamp.get("state") not in ("ready", None):
        return f"the live collection is {stamp.get('state')!r}, not a verified one"
    for key in SYNC_FIELDS:
        if stamp.get(key) != wanted.get(key):
            if key == "format":
                why = ("its points carry no text hashes to diff against" if (stamp.get(key) or 1) < 2 else
                       "its vector is unnamed; collections are now built with a named `dense` vector")
                return f"the live collection has stamp format {stamp.get(key)}: {why}"
            what = "model" if key == "model_fingerprint" else key
            return f"{what} changed: live {stamp.get(key)!r}, now {wanted.get(key)!r}"
    if size is not None and size != stamp.get("dimension"):
        return f"vector size: the live collection holds {size}-d vectors, its stamp says {stamp.get('dimension')}"
    if distance is not None and distance.lower() != str(stamp.get("distance")).lower():
        return f"distance: the live collection uses {distance}, its stamp says {stamp.get('distance')}"
    return None


# -- aliases --------------------------------------------------------------------------
def live_collection(store, alias: str) -> str | None:
    """The collection `alias` points at, or None."""
    return store.alias(alias)


def swap_alias(store, alias: str, collection: str) -> str | None:
    """Point `alias` at `collection` in one atomic step; returns the collection it pointed at before."""
    previous = store.alias(alias)
    if previous is None and store.exists(alias):
        raise IndexingError(f"a collection is named {alias!r}, so it cannot be an alias; rename it or set index.alias")
    return store.swap_alias(alias, collection)


# -- versions -------------------------------------------------------------------------
@dataclass
class Version:
    """One collection built for this spec's base name."""

    name: str
    run_id: str
    state: str
    live: bool
    points: int | None
    created: str | None
    promoted: str | None
    model_fingerprint: str | None
    model_path: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def versions(store, spec: Spec, *, count: bool = True) -> list[Version]:
    """Every stamped `<base>__*` collection, newest first (by creation). With `count`, each one's
    point count; None for one another process holds (an Edge shard a sync is writing)."""
    base = base_name(spec)
    live = live_collection(store, alias_name(spec))
    out = []
    for name in store.collections():
        if not name.startswith(base + SEP):
            continue
        stamp = store.read_stamp(name)
        if stamp is None or stamp.get("base") != base:
            continue  # not built by vectune for this base: never touched
        if stamp.get("role") == "scoring":
            continue  # built only to score a model as it would be served (`vectune.index.scoring`)
        out.append(Version(
            name=name, run_id=stamp.get("run_id", name[len(base) + len(SEP):]), state=stamp.get("state", "?"),
            live=name == live, points=_count(store, name) if count else None,
            created=stamp.get("created"), promoted=stamp.get("promoted"),
            model_fingerprint=stamp.get("model_fingerprint"), model_path=stamp.get("model_path"),
        ))
    out.sort(key=lambda v: (v.created or "", v.name), reverse=True)
    return out


def _count(store, name: str) -> int | None:
    try:
        return store.count(name)
    except IndexingError as exc:
        log.warning("cannot count %s: %s", name, exc)
        return None


def promote(store, spec: Spec, collection: str) -> str | None:
    """Swap the alias to `collection` and stamp when; returns the previous live one."""
    previous = swap_alias(store, alias_name(spec), collection)
    update_stamp(store, collection, promoted=now(), state="ready")
    return previous


def retain(store, spec: Spec, live: str) -> list[str]:
    """Keep `index.keep` previous ready collections (most recently live first) and delete
    the other versions older than `live`. Never deletes the live collection, nor a
    collection newer than it (another re-index may be building it)."""
    all_versions = versions(store, spec, count=False)
    current = next((v for v in all_versions if v.name == live), None)
    if current is None:
        return []
    others = [v for v in all_versions if v.name != live and not v.live and (v.created or "") <= (current.created or "")]
    ready = sorted((v for v in others if v.state == "ready"), key=lambda v: (v.promoted or "", v.created or ""),
                   reverse=True)
    keep = {v.name for v in ready[: spec.index.keep]}
    deleted = []
    for v in others:
        if v.name not in keep:
            store.drop(v.name)
            deleted.append(v.name)
    if deleted:
        log.info("deleted old collections: %s", ", ".join(deleted))
    return deleted


def vector_params(store, name: str) -> tuple[int | None, str | None]:
    """(dense vector size, distance name lower-cased) of a collection."""
    layout = store.layout(name)
    return layout.size, layout.distance


def incompatibilities(store, name: str, *, serving: str | None = None) -> list[str]:
    """Why `name` cannot serve the readers of the alias (empty: it can).

    Its vectors must have the size and distance its stamp says, its stamped model must be
    on this machine and give vectors of that size (search embeds queries with it), and,
    when `serving` (the live collection) is given, the same size and distance as that one,
    whose readers send vectors of its shape.
    """
    from pathlib import Path

    from vectune.embed.models import model_limits

    stamp = store.read_stamp(name) or {}
    size, distance = vector_params(store, name)
    out = []
    if size is None or stamp.get("dimension") != size:
        out.append(f"{name} holds vectors of size {size}, its stamp says {stamp.get('dimension')}")
    if distance and stamp.get("distance") and distance != str(stamp["distance"]).lower():
        out.append(f"{name} uses distance {distance}, its stamp says {stamp['distance']}")
    model = str(stamp.get("model_path") or "")
    if not str(stamp.get("model_fingerprint", "")).startswith("hub:"):
        if not Path(model).is_dir():
            out.append(f"its model {model or '(none stamped)'} is not on this machine (queries could not be embedded)")
        else:
            dim = model_limits(model)["dimension"]
            if dim is not None and size is not None and dim != size:
                out.append(f"its stamped model {model} gives {dim}-d vectors, the collection holds {size}-d")
    if serving is not None and serving != name:
        live_size, live_distance = vector_params(store, serving)
        if (size, distance) != (live_size, live_distance):
            out.append(f"readers of the alias send {live_size}-d {live_distance} queries (as {serving} serves), "
                       f"{name} holds {size}-d {distance} vectors")
    return out


def rollback_target(store, spec: Spec, to: str | None = None) -> tuple[str, str]:
    """(live collection, the collection to roll back to): verified, and compatible with
    what queries the alias (see `incompatibilities`); ModelError (exit 2) otherwise."""
    alias = alias_name(spec)
    live = live_collection(store, alias)
    if live is None:
        raise IndexingError(f"alias {alias!r} points at no collection: nothing to roll back")
    vs = versions(store, spec, count=False)
    if to is not None:
        match = next((v for v in vs if to in (v.name, v.run_id)), None)
        if match is None:
            raise IndexingError(f"no collection {to!r} of {base_name(spec)!r}; see `vectune collections`")
        if match.state not in ("ready", "rolled_back"):
            raise IndexingError(f"{match.name} is {match.state}, not a verified collection: refusing to serve it")
        problems = incompatibilities(store, match.name, serving=live)
        if problems:
            raise ModelError(f"refusing to point alias {alias!r} at {match.name}: " + "; ".join(problems))
        return live, match.name
    candidates = sorted((v for v in vs if v.name != live and v.state == "ready"),
                        key=lambda v: (v.promoted or "", v.created or ""), reverse=True)
    if not candidates:
        raise IndexingError(f"no previous verified collection to roll back to (live: {live}; index.keep is "
                            f"{spec.index.keep})")
    refused = []
    for candidate in candidates:
        problems = incompatibilities(store, candidate.name, serving=live)
        if not problems:
            if refused:
                log.warning("rollback skips %s", "; ".join(refused))
            return live, candidate.name
        refused.append(f"{candidate.name} ({'; '.join(problems)})")
    raise ModelError(f"no previous collection of alias {alias!r} can serve its readers: " + "; ".join(refused))


def rollback(store, spec: Spec, to: str | None = None) -> dict:
    """Point the alias back at the previous verified collection (or `to`).

    The collection rolled back from is stamped `rolled_back`, so a second rollback goes
    one further back instead of toggling between two versions.
    """
    live, target = rollback_target(store, spec, to)
    if target == live:
        return {"alias": alias_name(spec), "live": live, "previous": live, "changed": False}
    from vectune.index.verify import check_integrity

    check_integrity(store, target)  # its shard loads, and every point has its vector and doc_id
    promote(store, spec, target)
    update_stamp(store, live, state="rolled_back", rolled_back=now())
    return {"alias": alias_name(spec), "live": target, "previous": live, "changed": True}
