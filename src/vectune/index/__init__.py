"""The index stage: re-embed the corpus into a new collection version, verify it, swap the
alias atomically, keep old versions for rollback, or sync the live version in place.

Every module reaches Qdrant through one interface (`store.Store`), opened by one factory
(`engines.connect`): Qdrant Edge in-process for an embedded folder (development, one machine;
`edge.py`) or a Qdrant server (production; `server.py`). `stage.reindex` is the stage; `live`
answers queries against the version the alias serves; `collections` owns versions and aliases.
"""

from importlib import import_module

#: what the package offers, by the module that holds it: imported when first asked for, so a
#: process that needs one engine module (a child checking a shard, a Ray task) does not import
#: the whole stage, Ray included
_HOMES = {"list_collections": "live", "search": "live", "serving_model": "live", "promoted_model": "stage",
          "reindex": "stage", "connect": "engines"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"vectune.index.{_HOMES[name]}"), name)
