"""Collection versions behind one alias: names, stamps, the atomic swap, retention, rollback.

Each re-index builds `<base>__<run_id>`; readers query the alias. A collection's stamp
(collection metadata under the `vectune` key, kept by the embedded engine and by the
server) says which model and spec built it and where it is in its life:
`building` -> `ready` (verified) -> possibly `rolled_back`; `failed` when verification
refused it. The alias only ever moves in one `update_collection_aliases` call.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from vectune.errors import IndexingError, ModelError
from vectune.spec import Spec

log = logging.getLogger(__name__)

STAMP_KEY = "vectune"
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
def read_stamp(client, name: str) -> dict | None:
    """The vectune stamp of a collection, or None (not ours, or not stamped)."""
    metadata = client.get_collection(name).config.metadata or {}
    stamp = metadata.get(STAMP_KEY)
    return dict(stamp) if isinstance(stamp, dict) else None


def write_stamp(client, name: str, stamp: dict) -> None:
    """Replace the stamp (metadata merges top-level keys, so the whole dict is rewritten)."""
    client.update_collection(name, metadata={STAMP_KEY: stamp})


def update_stamp(client, name: str, **changes) -> dict:
    stamp = read_stamp(client, name) or {}
    stamp.update(changes)
    write_stamp(client, name, stamp)
    return stamp


#: stamp fields that decide the vectors and payloads: a live collection whose stamp matches
#: what a build would write now can be synced in place (`vectune.index.sync`)
SYNC_FIELDS = ("format", "model_fingerprint", "precision", "int8_recipe", "document_prefix", "max_seq_length",
               "normalize", "distance", "payload")
#: stamp format 2: every point carries a `text_hash` payload (format 1 did not)
FORMAT = 2


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
                return (f"the live collection has stamp format {stamp.get(key)}: its points carry no text hashes "
                        "to diff against")
            what = "model" if key == "model_fingerprint" else key
            return f"{what} changed: live {stamp.get(key)!r}, now {wanted.get(key)!r}"
    if size is not None and size != stamp.get("dimension"):
        return f"vector size: the live collection holds {size}-d vectors, its stamp says {stamp.get('dimension')}"
    if distance is not None and distance.lower() != str(stamp.get("distance")).lower():
        return f"distance: the live collection uses {distance}, its stamp says {stamp.get('distance')}"
    return None


# -- aliases --------------------------------------------------------------------------
def live_collection(client, alias: str) -> str | None:
    """The collection `alias` points at, or None."""
    for a in client.get_aliases().aliases:
        if a.alias_name == alias:
            return a.collection_name
    return None


def swap_alias(client, alias: str, collection: str) -> str | None:
    """Point `alias` at `collection` in ONE atomic call (delete + create); returns the
    collection it pointed at before."""
    from qdrant_client import models

    previous = live_collection(client, alias)
    if previous == collection:
        return previous
    if previous is None and client.collection_exists(alias):
        raise IndexingError(f"a collection is named {alias!r}, so it cannot be an alias; rename it or set index.alias")
    ops = []
    if previous is not None:
        ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    ops.append(models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
    client.update_collection_aliases(change_aliases_operations=ops)
    return previous


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


def versions(client, spec: Spec, *, count: bool = True) -> list[Version]:
    """Every stamped `<base>__*` collection, newest first (by creation)."""
    base = base_name(spec)
    live = live_collection(client, alias_name(spec))
    out = []
    for c in client.get_collections().collections:
        if not c.name.startswith(base + SEP):
            continue
        stamp = read_stamp(client, c.name)
        if stamp is None or stamp.get("base") != base:
            continue  # not built by vectune for this base: never touched
        out.append(Version(
            name=c.name, run_id=stamp.get("run_id", c.name[len(base) + len(SEP):]), state=stamp.get("state", "?"),
            live=c.name == live, points=client.count(c.name, exact=True).count if count else None,
            created=stamp.get("created"), promoted=stamp.get("promoted"),
            model_fingerprint=stamp.get("model_fingerprint"), model_path=stamp.get("model_path"),
        ))
    out.sort(key=lambda v: (v.created or "", v.name), reverse=True)
    return out


def promote(client, spec: Spec, collection: str) -> str | None:
    """Swap the alias to `collection` and stamp when; returns the previous live one."""
    previous = swap_alias(client, alias_name(spec), collection)
    update_stamp(client, collection, promoted=now(), state="ready")
    return previous


def retain(client, spec: Spec, live: str) -> list[str]:
    """Keep `index.keep` previous ready collections (most recently live first) and delete
    the other versions older than `live`. Never deletes the live collection, nor a
    collection newer than it (another re-index may be building it)."""
    all_versions = versions(client, spec, count=False)
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
            client.delete_collection(v.name)
            deleted.append(v.name)
    if deleted:
        log.info("deleted old collections: %s", ", ".join(deleted))
    return deleted


def vector_params(client, name: str) -> tuple[int | None, str | None]:
    """(vector size, distance name lower-cased) of a collection's single unnamed vector."""
    vectors = client.get_collection(name).config.params.vectors
    if isinstance(vectors, dict):  # named vectors: not a layout vectune builds
        return None, None
    distance = getattr(vectors.distance, "value", vectors.distance)
    return vectors.size, str(distance).lower()


def incompatibilities(client, name: str, *, serving: str | None = None) -> list[str]:
    """Why `name` cannot serve the readers of the alias (empty: it can).

    Its vectors must have the size and distance its stamp says, its stamped model must be
    on this machine and give vectors of that size (search embeds queries with it), and,
    when `serving` (the live collection) is given, the same size and distance as that one,
    whose readers send vectors of its shape.
    """
    from pathlib import Path

    from vectune.embed.models import model_limits

    stamp = read_stamp(client, name) or {}
    size, distance = vector_params(client, name)
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
        live_size, live_distance = vector_params(client, serving)
        if (size, distance) != (live_size, live_distance):
            out.append(f"readers of the alias send {live_size}-d {live_distance} queries (as {serving} serves), "
                       f"{name} holds {size}-d {distance} vectors")
    return out


def rollback_target(client, spec: Spec, to: str | None = None) -> tuple[str, str]:
    """(live collection, the collection to roll back to): verified, and compatible with
    what queries the alias (see `incompatibilities`); ModelError (exit 2) otherwise."""
    alias = alias_name(spec)
    live = live_collection(client, alias)
    if live is None:
        raise IndexingError(f"alias {alias!r} points at no collection: nothing to roll back")
    vs = versions(client, spec, count=False)
    if to is not None:
        match = next((v for v in vs if to in (v.name, v.run_id)), None)
        if match is None:
            raise IndexingError(f"no collection {to!r} of {base_name(spec)!r}; see `vectune collections`")
        if match.state not in ("ready", "rolled_back"):
            raise IndexingError(f"{match.name} is {match.state}, not a verified collection: refusing to serve it")
        problems = incompatibilities(client, match.name, serving=live)
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
        problems = incompatibilities(client, candidate.name, serving=live)
        if not problems:
            if refused:
                log.warning("rollback skips %s", "; ".join(refused))
            return live, candidate.name
        refused.append(f"{candidate.name} ({'; '.join(problems)})")
    raise ModelError(f"no previous collection of alias {alias!r} can serve its readers: " + "; ".join(refused))


def rollback(client, spec: Spec, to: str | None = None) -> dict:
    """Point the alias back at the previous verified collection (or `to`).

    The collection rolled back from is stamped `rolled_back`, so a second rollback goes
    one further back instead of toggling between two versions.
    """
    live, target = rollback_target(client, spec, to)
    if target == live:
        return {"alias": alias_name(spec), "live": live, "previous": live, "changed": False}
    promote(client, spec, target)
    update_stamp(client, live, state="rolled_back", rolled_back=now())
    return {"alias": alias_name(spec), "live": target, "previous": live, "changed": True}
