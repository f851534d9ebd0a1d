"""How the evaluate stage splits the corpus among encoder actors (pure arithmetic)."""

from __future__ import annotations

import pytest

from vectune.embed.corpus import corpus_batching


def shares(count: int, blocks: int, actors: int) -> list[int]:
    """Rows per actor when Ray splits `count` rows evenly into `blocks` and deals them round robin."""
    base, extra = divmod(count, blocks)
    sizes = [base + (i < extra) for i in range(blocks)]
    return [sum(sizes[a::actors]) for a in range(actors)]


@pytest.mark.parametrize(
    ("count", "batch_size", "actors"),
    [(2000, 1024, 2), (5183, 1024, 2), (300, 1024, 2), (300, 1024, 1), (20000, 1024, 2), (5183, 512, 3),
     (7, 1024, 2), (1, 1024, 2), (1024, 1024, 1), (100000, 2048, 4)],
)
def test_batches_are_bounded_and_blocks_balance(count, batch_size, actors):
    batch, blocks = corpus_batching(count, batch_size, actors)
    assert 1 <= batch <= batch_size
    assert blocks % actors == 0
    # every block holds at least one batch, so Ray never glues two blocks onto one actor
    assert count // blocks >= batch or count < blocks
    got = shares(count, blocks, actors)
    assert max(got) - min(got) <= max(1, blocks // actors)  # off by one row per block at most


def test_small_corpus_still_feeds_every_actor():
    # 300 documents, batch 1024, 2 actors: before, one batch of 300 went to one actor
    assert corpus_batching(300, 1024, 2) == (150, 2)
    assert corpus_batching(2000, 1024, 2) == (1000, 2)  # not 1,500 + 500
