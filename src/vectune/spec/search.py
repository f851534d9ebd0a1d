"""The `search` section: what readers are served, and so what the gate and validation score.

`dense` ranks by the model's vectors alone; `hybrid` asks Qdrant for the dense and the BM25
(`bm25` section) candidates of a query (`prefetch` each) and fuses them in the engine with
reciprocal rank fusion (`rrf`, constant `rrf_k`) or distribution-based score fusion (`dbsf`):
Qdrant's Query API `prefetch` + `fusion`, embedded (Qdrant Edge) and on a server alike.
Hybrid needs the sparse vectors in the collection (`index.sparse: bm25`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vectune.spec._base import Section


class SearchSpec(Section):
    """How a query is answered."""

    mode: Literal["dense", "hybrid"] = Field(
        "dense", description="dense: the model's vectors; hybrid: dense and BM25 fused by Qdrant "
                             "(needs index.sparse: bm25).")
    fusion: Literal["rrf", "dbsf"] = Field(
        "rrf", description="How hybrid fuses its two candidate lists: reciprocal rank fusion or "
                           "distribution-based score fusion.")
    rrf_k: int = Field(60, ge=1, le=100_000, description="RRF's rank constant: 1 / (rrf_k + rank).")
    prefetch: int = Field(100, ge=1, le=100_000, description="Candidates each side (dense, BM25) hands to the "
                                                            "fusion; at least the depth asked for.")
