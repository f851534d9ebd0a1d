"""The index stage: re-embed the corpus into a new collection version, verify it, swap the
alias atomically, keep old versions for rollback, or sync the live version in place.

Every module reaches Qdrant through one interface (`store.Store`), opened by one factory
(`engines.connect`): Qdrant Edge in-process for an embedded folder (development, one machine;
`edge.py`) or a Qdrant server (production; `server.py`). `stage.reindex` is the stage; `live`
answers queries against the version the alias serves; `collections` owns versions and aliases.
"""

from vectune.index.live import list_collections, search, serving_model
from vectune.index.stage import promoted_model, reindex
from vectune.index.engines import connect

__all__ = ["connect", "list_collections", "promoted_model", "reindex", "search", "serving_model"]
