"""The `model` section: which embedding model, and how texts are fed to it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vectune.spec._base import Section


class ModelSpec(Section):
    """The base bi-encoder.

    `base` is a short name from vectune's registry (`all-MiniLM-L6-v2` resolves to the
    packaged offline copy), a local folder in sentence-transformers format, or a
    Hugging Face hub id (needs network access or a warm cache).
    """

    base: str = "all-MiniLM-L6-v2"
    max_seq_length: int | None = Field(None, ge=8, le=8192, description="Token limit; the model's own when unset.")
    query_prefix: str = Field("", description='Prepended to queries, e.g. "query: " for E5.')
    document_prefix: str = Field("", description='Prepended to documents, e.g. "passage: " for E5.')
    normalize: bool = Field(True, description="L2-normalise embeddings (cosine similarity as dot product).")
    batch_size: int = Field(64, ge=1, le=65_536, description="Texts per forward pass inside `encode`.")
    precision: Literal["auto", "fp32", "bf16", "int8", "fp16"] = Field(
        "auto",
        description="Forward pass when encoding (mine, evaluate, re-index, search); part of the vectors' "
        "identity (embedding cache, collection stamp), which records the resolved value, never `auto`. "
        "auto (default): decided where the encoding runs: fp32 on CPUs, fp16 on GPUs. bf16: torch.autocast, "
        "faster only where bf16 is native (CPUs with AVX-512 BF16 or AMX, recent GPUs; elsewhere emulated, "
        "about 6x slower than fp32 on an AVX2 CPU), vectors within cosine 0.9999 of fp32. int8 (CPUs): the "
        "transformer as a static int8 ONNX Runtime graph, built once per model and machine (beside the model, "
        "else in the user's cache; the `int8` extra); vectors at cosine ~0.998 of fp32. fp16 (GPUs): half "
        "weights. Figures: benchmarks/README.md.",
    )
    int8_tolerance: float = Field(
        0.005, ge=0.0, le=1.0,
        description="With precision int8: the largest drop of nDCG@10 against fp32, on labelled queries the "
        "model is checked on (vectune.embed.int8_check), that int8 may cost; a model whose int8 variant "
        "loses more is encoded in fp32, and the run records why.",
    )
