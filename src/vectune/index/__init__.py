"""The index stage: re-embed the corpus into a new Qdrant collection, verify it, swap the
alias atomically, keep old versions for rollback.

Qdrant is reached through one factory (`connect`) for the embedded engine (development,
small corpora) and a server (production). See `stage.reindex` for the pipeline.
"""

from vectune.index.client import connect
from vectune.index.query import list_collections, rollback, search
from vectune.index.stage import promoted_model, reindex, reindex_spec

__all__ = ["connect", "list_collections", "promoted_model", "reindex", "reindex_spec", "rollback", "search"]
