"""The `bm25` section: Qdrant's BM25 (its tokenizer and scoring), the sparse baseline.

One section at the top level, read wherever BM25 vectors are made: `evaluate` ranks the
split with it beside the dense models, and a hybrid index stores the same sparse vectors.
The fields are Qdrant's `Bm25Config` (the server's and qdrant-edge's `Bm25`), with its
defaults: k 1.2, b 0.75, avg_len 256, the word tokenizer, lower-case, English stopwords
and English Snowball stemming.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vectune.spec._base import Section

#: languages qdrant-edge 0.9's `Bm25Config(language=...)` accepts (its stopword lists)
LANGUAGES = ("arabic", "azerbaijani", "basque", "bengali", "catalan", "chinese", "danish", "dutch", "english",
             "finnish", "french", "german", "greek", "hebrew", "hinglish", "hungarian", "indonesian", "italian",
             "japanese", "kazakh", "nepali", "norwegian", "portuguese", "romanian", "russian", "slovene", "spanish",
             "swedish", "tajik", "turkish")
#: the languages among those with a Snowball stemmer (`SnowballLanguage`)
SNOWBALL = ("arabic", "danish", "dutch", "english", "finnish", "french", "german", "greek", "hungarian", "italian",
            "norwegian", "portuguese", "romanian", "russian", "spanish", "swedish", "turkish")

Language = Literal[LANGUAGES]  # type: ignore[valid-type]


class Bm25Spec(Section):
    """How text becomes BM25 sparse vectors (Qdrant's `Bm25Config`)."""

    language: Language = Field("english", description="Language of the stopword list and the stemmer.")
    stopwords: Literal["language", "none"] = Field(
        "language", description="Drop the language's stopwords (`language`) or keep every word (`none`).")
    stemmer: Literal["snowball", "none"] = Field(
        "snowball", description="Snowball stemming in `language`, or none (languages without a Snowball "
                                "stemmer need `none`).")
    tokenizer: Literal["word", "whitespace", "prefix", "multilingual", "code"] = Field(
        "word", description="Qdrant's text tokenizer.")
    lowercase: bool = True
    ascii_folding: bool = Field(False, description="Fold accented letters to ASCII (é -> e).")
    min_token_len: int | None = Field(None, ge=1, le=1000, description="Drop shorter tokens.")
    max_token_len: int | None = Field(None, ge=1, le=1000, description="Drop longer tokens.")
    k: float = Field(1.2, ge=0.0, le=100.0, description="Term-frequency saturation (k1).")
    b: float = Field(0.75, ge=0.0, le=1.0, description="Document-length normalisation: 0 none, 1 full.")
    avg_len: float = Field(256.0, gt=0.0, le=1e7, description="Average document length in tokens the length "
                                                             "normalisation assumes.")

    @model_validator(mode="after")
    def _consistent(self) -> "Bm25Spec":
        if self.stemmer == "snowball" and self.language not in SNOWBALL:
            raise ValueError(f"Snowball has no stemmer for {self.language!r}: set stemmer: none "
                             f"(Snowball languages: {', '.join(SNOWBALL)})")
        if self.min_token_len is not None and self.max_token_len is not None \
                and self.min_token_len > self.max_token_len:
            raise ValueError(f"min_token_len {self.min_token_len} > max_token_len {self.max_token_len}")
        return self
