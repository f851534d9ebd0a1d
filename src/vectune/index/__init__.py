"""The index stage: re-embed the corpus into a new Qdrant collection, verify it, swap the
alias atomically, keep old versions for rollback.

Qdrant is reached through one factory (`connect`) for the embedded engine (development,
small corpora) and a server (production). `stage.reindex` is the stage; `live` answers
queries against the collection the alias serves; `collections` owns versions and aliases.
"""

from vectune.index.client import connect
from vectune.index.live import list_collections, search, serving_model
from vectune.index.stage import promoted_model, reindex

__all__ = ["connect", "list_collections", "promoted_model", "reindex", "search", "serving_model"]
