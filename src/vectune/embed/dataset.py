"""Embedding a Ray Dataset with a pool of encoder actors, and small text lists locally."""

from __future__ import annotations

import dataclasses

import numpy as np

from vectune.embed.actors import ActorPlan, actor_pool
from vectune.embed.cache import EmbeddingCache
from vectune.embed.encoder import Encoder, EncoderConfig


def embed_dataset(ds, config: EncoderConfig, plan: ActorPlan, *, batch_size: int = 1024,
                  keep: tuple[str, ...] | None = None, progress=None, preload: bool = False,
                  mark_fresh: bool = False):
    """Add an `embedding` column to a Dataset with a `text` column (lazy, streaming).

    `keep` names the input columns passed through (all when None). Every Ray op
    upstream of this pool must ask for a CPU fraction only, or it starves behind
    the actors. Large Ray batches let `encode` sort by length inside them (less padding). On 2
    CPUs a pool of 1-thread actors runs at 0.93-1.00x one 2-thread process end to end: from
    its first batch to its last it runs at 1.10x, 97% of two bare 1-thread processes, and
    loses the rest to the actors' start, importing torch and sentence-transformers
    (benchmarks/encode.py). `progress` is a `vectune.progress.track` counter the actors tick
    per text. `preload` loads the model as each actor starts (see `Encoder`); pass
    `expects_encoding(config, rows)`. `plan` is the stage's actor plan (`plan_actors`).
    `mark_fresh` adds the `encoder.FRESH` column.
    """
    config = dataclasses.replace(config, threads=config.threads or plan.threads,
                                 device=config.device or ("cuda" if plan.gpus else None))
    return ds.map_batches(
        Encoder,
        fn_constructor_kwargs={"config": config, "keep": keep, "progress": progress, "preload": preload,
                               "mark_fresh": mark_fresh},
        batch_size=batch_size,
        batch_format="numpy",
        compute=actor_pool(plan.actors),
        num_cpus=plan.cpus,
        num_gpus=plan.gpus or None,
        udf_modifying_row_count=False,
    )


def in_driver(driver_encode_max: int, rows: int, plan: ActorPlan) -> bool:
    """Whether `rows` texts are encoded in this process rather than by an actor pool: few enough
    (`runtime.driver_encode_max`), no GPUs asked for, and Ray on one machine (where a pool of
    1-thread actors gains nothing over one process using every core: 0.93-1.00x end to end,
    benchmarks/encode.py, and each actor pays its own imports and model load)."""
    if plan.gpus or rows > driver_encode_max:
        return False
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) == 1


def embed_here(ds, config: EncoderConfig, *, keep: tuple[str, ...] | None = None, progress=None,
               mark_fresh: bool = False):
    """What `embed_dataset` gives (the same columns and vectors), encoded in this process: the
    input read by Ray Data, one `Encoder` (its model shared with this process's other encoders of
    the same model), the result a materialized Dataset. For small corpora (`in_driver`)."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    encoder = Encoder(config, keep=keep, progress=progress, mark_fresh=mark_fresh)
    tables = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        out = encoder(batch)
        vectors = np.ascontiguousarray(out.pop("embedding"), dtype=np.float32)
        columns = {k: pa.array(v) if v.dtype.kind in "iufb" else pa.array(v.tolist()) for k, v in out.items()}
        tables.append(pa.table({**columns, "embedding": ArrowTensorArray.from_numpy(vectors)}))
    return ray.data.from_arrow(tables)


def expects_encoding(config: EncoderConfig, rows: int) -> bool:
    """Whether embedding `rows` texts will run the model: no cache, or one too small to
    hold them all. A cache that may hold them leaves the model unloaded until a text is
    missing, so a warm run never pays for it."""
    if not config.cache_dir:
        return True
    return len(EmbeddingCache(config.cache_dir)) < rows


def compact_cache(config: EncoderConfig) -> None:
    """Merge the vectors workers added to the cache (call after the dataset is consumed)."""
    if config.cache_dir:
        EmbeddingCache(config.cache_dir).compact()


#: texts from which `encode_texts` shows its progress (fewer take seconds)
SHOW_FROM = 256


def encode_texts(texts: list[str], config: EncoderConfig, *, encoder: Encoder | None = None,
                 label: str = "encode queries") -> np.ndarray:
    """Encode a small list of texts (queries) in this process, through the cache; from
    `SHOW_FROM` texts on, with a progress display named `label`."""
    from vectune.progress import track

    encoder = encoder or Encoder(config)
    with track(label, len(texts) if len(texts) >= SHOW_FROM else 0, unit="texts", local=True) as counter:
        encoder.progress, before = counter, encoder.progress
        try:
            vectors = encoder.encode(texts)
        finally:
            encoder.progress = before
    compact_cache(config)
    return vectors
