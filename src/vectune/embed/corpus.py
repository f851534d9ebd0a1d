"""The whole corpus through the encoder actors: what mine, evaluate and re-index share.

Every stage that needs the corpus' vectors (mining with the base model, evaluating a model,
re-indexing) reads it here, cut into blocks that give every actor an equal share, through
the embedding cache.
"""

from __future__ import annotations

import math

from vectune.data import DomainData
from vectune.embed.actors import ActorPlan
from vectune.embed.dataset import embed_dataset, embed_here, expects_encoding, in_driver
from vectune.embed.encoder import encoder_config
from vectune.spec import Spec


def corpus_batching(count: int, batch_size: int, actors: int) -> tuple[int, int]:
    """(Ray batch size, read blocks) that give every encoder actor an equal share.

    Ray Data hands an actor whole blocks, gathered until they hold `batch_size` rows, so
    blocks a little smaller than a batch pile up: 4 blocks of 500 with batch 1024 send
    1,500 documents to one actor and 500 to the other. Blocks of at least one batch each,
    in a multiple of the actor count, go one by one to the next free actor.
    """
    per_block = max(1, min(batch_size, math.ceil(count / actors)))
    blocks = math.ceil(math.ceil(count / per_block) / actors) * actors
    # the read splits rows evenly (sizes differ by one at most): every block >= count // blocks
    return max(1, count // blocks), blocks


def embedded_corpus(spec: Spec, data: DomainData, model_path: str, plan: ActorPlan, *, batch_size: int,
                    keep: tuple[str, ...] = ("doc_id",), cache: bool = True, progress=None):
    """The corpus Dataset with an `embedding` column, and the encoder config used.

    `plan` is the stage's actor plan; `batch_size` is an upper bound: see `corpus_batching`.
    A small corpus on one machine is encoded in this process instead (`in_driver`).
    `cache=False` skips the embedding cache (benchmarks).
    """
    cfg = encoder_config(spec, model_path, role="document", cache=cache)
    batch, blocks = corpus_batching(data.corpus.count, batch_size, plan.actors)
    ds = data.corpus_dataset(blocks=blocks)
    if in_driver(spec.runtime.driver_encode_max, data.corpus.count, plan):
        return embed_here(ds, cfg, keep=keep, progress=progress), cfg
    return embed_dataset(ds, cfg, plan, batch_size=batch, keep=keep, progress=progress,
                         preload=expects_encoding(cfg, data.corpus.count)), cfg
