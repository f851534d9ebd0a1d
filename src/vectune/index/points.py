"""Point ids: uuid5 of document ids, so a re-run overwrites instead of duplicating."""

from __future__ import annotations

import uuid
from typing import Iterable

#: fixed namespace: the same document id maps to the same point id in every collection
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://vectune.dev/points")

_MASK = (1 << 128) - 1


def point_id(doc_id: str) -> str:
    """The Qdrant point id of a document: uuid5 of its id, stable across runs."""
    return str(uuid.uuid5(POINT_NAMESPACE, str(doc_id)))


def id_checksum(point_ids: Iterable[str]) -> tuple[int, int]:
    """(count, sum of the 128-bit ids mod 2**128): equal for two id sets that are equal,
    computed in one streaming pass with constant memory."""
    count = total = 0
    for pid in point_ids:
        count += 1
        total = (total + uuid.UUID(str(pid)).int) & _MASK
    return count, total
