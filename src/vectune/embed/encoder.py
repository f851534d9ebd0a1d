"""The encoder every stage shares: a Ray Data callable class plus a driver-side helper."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectune.embed.cache import EmbeddingCache, cache_key, text_hashes
from vectune.embed.models import embedding_dimension, load_model, model_fingerprint
from vectune.progress import tick

log = logging.getLogger(__name__)

#: texts per `model.encode` call when a progress counter is ticked (a multiple of the model batch)
PROGRESS_CHUNK = 128


def autocast(precision: str, device_type: str):
    """The context a forward pass runs in: bf16 autocast (matmuls in bf16, norms and softmax in
    fp32, weights untouched), or nothing: fp32, int8 (an ONNX Runtime graph) and fp16 (half
    weights) need none. `precision` is a resolved one (`vectune.precision`), never `auto`;
    whether bf16 is native here was said once, on the driver, when it was resolved."""
    import contextlib

    import torch

    if precision in ("fp32", "int8", "fp16"):
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"unresolved precision {precision!r}: resolve it first (vectune.precision)")
    return torch.autocast(device_type, dtype=torch.bfloat16)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def int8_recipe(precision: str) -> str | None:
    """The int8 variant's tag for precision int8 (None otherwise): `r4-<key>`, where the key
    hashes the recipe, the graph's format, the calibration sample and the library versions
    that build it (`vectune.embed.int8.identity`). Part of the vectors' identity, since any of
    them gives other vectors (cache keys, collection stamps, score digests). The same on every
    CPU kind: where a CPU lacks VNNI the variant runs ONNX Runtime's exact kernels
    (`vectune.embed.int8`), so every CPU kind computes the same vectors."""
    if precision != "int8":
        return None
    from vectune.embed.int8 import tag

    return tag()


def precision_identity(precision: str, int8_tag: str | None = None) -> str:
    """`precision` as the embedding cache keys it: int8 with its variant's tag
    (`int8-r4-<key>`; `int8_tag`, a stamped one, instead of this installation's)."""
    if precision != "int8":
        return precision
    return f"int8-{int8_tag or int8_recipe(precision)}"


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that determines a vector, plus how to compute it."""

    model_path: str
    fingerprint: str
    max_seq_length: int | None = None
    prefix: str = ""
    normalize: bool = True
    batch_size: int = 64
    cache_root: str | None = None
    device: str | None = None
    threads: int | None = None
    precision: str = "fp32"
    #: where int8 variants go when the model folder is read-only or packaged (default: the
    #: user's cache, `vectune.embed.int8.user_cache`)
    int8_root: str | None = None
    #: the int8 variant to use (a stamped `int8_recipe`); None: this installation's
    int8_tag: str | None = None

    @property
    def cache_dir(self) -> str | None:
        if not self.cache_root:
            return None
        key = cache_key(self.fingerprint, max_seq_length=self.max_seq_length, prefix=self.prefix,
                        normalize=self.normalize, precision=precision_identity(self.precision, self.int8_tag))
        return str(Path(self.cache_root) / key)



def encoder_config(spec, model_path: str, *, role: str, cache: bool = True, fingerprint: str | None = None,
                   precision: str | None = None, int8_tag: str | None = None) -> EncoderConfig:
    """Build the config for `role` ("query" or "document") from the spec's model section.

    `fingerprint` is the model's, when the caller has it already (one re-index computes it once).
    `precision` overrides the spec's (search embeds queries as the collection was built), and
    `int8_tag` picks the int8 variant (a collection's stamped `int8_recipe`) over this
    installation's.
    """
    m = spec.model
    prefix = m.query_prefix if role == "query" else m.document_prefix
    local = "://" not in spec.runs_root()
    return EncoderConfig(
        model_path=model_path,
        fingerprint=fingerprint or model_fingerprint(model_path),
        max_seq_length=m.max_seq_length,
        prefix=prefix,
        normalize=m.normalize,
        batch_size=m.batch_size,
        cache_root=str(Path(spec.runs_root()) / "_cache" / "embeddings") if cache and local else None,
        threads=spec.runtime.torch_threads,
        precision=precision or _resolved_precision(spec),
        int8_tag=int8_tag,
    )


def encode_sorted(encode, texts: list[str], chunk: int, progress=None) -> np.ndarray:
    """`encode` (a list of texts -> an n x d array) over `texts` sorted by length, as
    `SentenceTransformer.encode` sorts inside a call, in chunks of `chunk` texts (whole model
    batches: the same padded batches as one call), ticking `progress` after each; the rows
    come back in the texts' order."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = None
    for start in range(0, len(texts), max(chunk, 1)):
        idx = order[start:start + chunk]
        vectors = encode([texts[i] for i in idx])
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
        tick(progress, len(idx))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _shared_model(path: str, fingerprint: str, max_seq_length, device, threads, precision: str, int8_root, int8_tag):
    """One loaded model per process for every encoder of the same model and settings (the
    queries' and the documents' encoders of a small evaluate in the driver load it once).
    Keyed by the model's fingerprint, so a model rewritten in place is loaded again. Encoders
    only run inference on it; training loads its own."""
    return load_model(path, max_seq_length=max_seq_length, device=device, threads=threads, precision=precision,
                      cache_root=int8_root, fingerprint=fingerprint, int8_tag=int8_tag)


def _resolved_precision(spec) -> str:
    if spec.model.precision != "auto":
        return spec.model.precision
    from vectune.precision import resolved

    return resolved(spec, train=False).model.precision


#: the column an `Encoder` built with `mark_fresh` adds: whether the row's vector was computed by
#: the encoder's model as the row passed (True), or read from the embedding cache. A vector
#: computed so is a fresh embedding: the same model loaded again gives the same floats, so a
#: verification of the stored vectors need not run the model on that row again.
FRESH = "fresh_vector"


class Encoder:
    """Ray Data UDF: adds an `embedding` column (float32) computed from `text`.

    Loads the model once per actor: on the first text the cache lacks, or in the
    constructor with `preload` (when the caller expects to encode: the import of torch
    and sentence-transformers, ~6 s of CPU in a fresh worker, then runs while Ray Data is
    still starting the other actors and reading, not after the first batch has arrived).
    Texts already in the embedding cache are not re-encoded; new vectors are written to it
    as a pending shard per batch. With a `progress` counter (see `vectune.progress`), every
    text done ticks it.
    """

    def __init__(self, config: EncoderConfig, text_column: str = "text", keep: tuple[str, ...] | None = None,
                 progress=None, preload: bool = False, remember: bool = False, mark_fresh: bool = False):
        self.config = config
        #: with `mark_fresh`, each batch gets a `FRESH` column: whether its row's vector was
        #: computed by this model now rather than read from the cache (see `FRESH`)
        self.mark_fresh = mark_fresh
        #: with `remember`, the vectors this encoder computed itself (not read from the cache),
        #: by text hash (prefix included): fresh embeddings a verification in this process may
        #: reuse instead of running the same model on the same texts again
        self.computed: dict[int, np.ndarray] | None = {} if remember else None
        self.progress = progress
        self.text_column = text_column
        self.keep = keep
        self._model = None
        self.cache = EmbeddingCache(config.cache_dir) if config.cache_dir else None
        self.encoded = 0
        self.cached = 0
        if preload:
            self.model  # noqa: B018 - load now

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded in this process already."""
        return self._model is not None

    def computed_vector(self, text: str) -> np.ndarray | None:
        """The vector this encoder computed for `text` (prefix added here), if it did (`remember`)."""
        if not self.computed:
            return None
        return self.computed.get(int(text_hashes([self.config.prefix + text])[0]))

    def without_cache(self) -> "Encoder":
        """The same model, loaded once, with no cache: fresh vectors (to verify stored ones)."""
        import dataclasses

        twin = Encoder(dataclasses.replace(self.config, cache_root=None))
        twin._model = self._model
        twin.computed = self.computed  # the same model: what it computed is fresh for the twin too
        return twin

    @property
    def model(self):
        if self._model is None:  # lazy: an all-cached run never loads the model
            if self.config.precision == "fp16" and not (self.config.device or "").startswith("cuda"):
                _warn_once("model.precision fp16 encoding on a CPU: slow; fp16 is meant for GPUs (int8 or "
                           "bf16 on CPUs)")
            self._model = _shared_model(self.config.model_path, self.config.fingerprint,
                                        self.config.max_seq_length, self.config.device, self.config.threads,
                                        self.config.precision, self.config.int8_root, self.config.int8_tag)
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for texts (float32, n x d), through the cache when there is one."""
        return self._vectors(texts)[0]

    def _vectors(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(`encode`'s vectors, a bool per text: computed by the model now, not read from the cache)."""
        texts = [self.config.prefix + t for t in texts] if self.config.prefix else list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), np.zeros(0, dtype=bool)
        if self.cache is None:
            vectors = self._encode(texts)
            if self.computed is not None:
                self.computed.update(zip(text_hashes(texts).tolist(), vectors))
            return vectors, np.ones(len(texts), dtype=bool)
        hashes = text_hashes(texts)
        found, hits = self.cache.lookup(hashes)
        out = None
        if hits is not None:
            out = np.empty((len(texts), hits.shape[1]), dtype=np.float32)
            out[found] = hits
        missing = np.flatnonzero(~found)
        self.cached += int(found.sum())
        if len(missing):
            # de-duplicate inside the batch so a repeated text is encoded once
            uniq, inverse = np.unique(hashes[missing], return_inverse=True)
            tick(self.progress, len(texts) - len(uniq))  # cache hits and repeats: done already
            first = {h: i for i, h in zip(missing[::-1], hashes[missing][::-1])}
            vecs = self._encode([texts[first[h]] for h in uniq])
            self.cache.add(uniq, vecs)
            if self.computed is not None:
                self.computed.update(zip(uniq.tolist(), vecs))
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
            out[missing] = vecs[inverse]
        else:
            tick(self.progress, len(texts))
        return out, ~found

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        chunk = max(1, PROGRESS_CHUNK // self.config.batch_size) * self.config.batch_size
        if self.progress is None or len(texts) <= chunk:
            vectors = self._model_encode(texts)
            tick(self.progress, len(texts))
            return vectors
        return encode_sorted(self._model_encode, texts, chunk, self.progress)

    def _model_encode(self, texts: list[str]) -> np.ndarray:
        half = self.config.precision in ("bf16", "fp16")
        with autocast(self.config.precision, self.model.device.type):
            vectors = self.model.encode(
                texts,
                batch_size=self.config.batch_size,
                normalize_embeddings=self.config.normalize and not half,
                convert_to_tensor=half,
                convert_to_numpy=not half,
                show_progress_bar=False,
            )
        if half:  # pooled output back to fp32 and normalised there, so norms are 1 to fp32 precision
            import torch

            vectors = vectors.float()
            if self.config.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            vectors = vectors.cpu().numpy()
        return vectors.astype(np.float32, copy=False)

    @property
    def dimension(self) -> int:
        return embedding_dimension(self.model)

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch[self.text_column]]
        vectors, fresh = self._vectors(texts)
        # projecting here, not in a separate Ray op, keeps every CPU-hungry op in the pool
        out = {k: v for k, v in batch.items() if self.keep is None or k in self.keep}
        out["embedding"] = vectors  # n x d ndarray -> a fixed-shape tensor column
        if self.mark_fresh:
            out[FRESH] = fresh
        return out
