"""The one factory of stores: Qdrant Edge in this process for an embedded path, a server's
client for a url. Apart from `store` (the interface and its types), so that the engines import
the interface and nothing imports back in a circle."""

from __future__ import annotations

from vectune.index.store import Store, Target, target
from vectune.spec import Spec


def open_store(where: Target, *, spec_source: str | None = None) -> Store:
    """The store at `where`: Qdrant Edge in this process for a path, a server's client for a url
    (checked to answer, with bounded retries).

    Raises:
        IndexingError: the server cannot be reached or refuses the key; the embedded folder
            cannot be made. OldStoreError (exit 2): the folder holds an older vectune's store.
    """
    if where.embedded:
        from vectune.index.edge import EdgeStore

        return EdgeStore(where, spec_source=spec_source)
    from vectune.index.server import ServerStore

    return ServerStore.open(where)


def connect(spec: Spec) -> Store:
    """The spec's store (see `open_store`); close it when done."""
    return open_store(target(spec), spec_source=str(spec.source) if spec.source else None)
