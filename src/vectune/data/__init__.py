"""Domain data: the corpus as a streaming Ray Dataset, queries and labels on the driver."""

from __future__ import annotations

import logging
from functools import cached_property

from vectune.data._files import file_digest
from vectune.data.corpus import (CorpusIds, CorpusInfo, check_corpus, checked_batches, doc_text, iter_corpus,
                                 read_corpus)
from vectune.data.labels import Labels, load_labels, load_queries, query_id_for
from vectune.errors import DataError
from vectune.spec import Spec

log = logging.getLogger(__name__)

__all__ = ["CorpusIds", "CorpusInfo", "DomainData", "Labels", "doc_text", "query_id_for"]


class DomainData:
    """Everything the stages read from `spec.data`, validated once and lazily.

    The corpus is checked in one streaming pass (only its ids are kept) and read by
    the stages as a Ray Dataset; queries and labels are small and live on the driver.

    Args:
        spec: the spec whose `data` section is read.
        train: training labels to use instead of `data.train`'s (a tune search trains
            on a subset, its validation queries carved out).
    """

    def __init__(self, spec: Spec, *, train: Labels | None = None):
        self.spec = spec
        self._labels: dict[str, Labels] = {"train": train} if train is not None else {}

    @property
    def corpus_path(self) -> str:
        return self.spec.resolve(self.spec.data.corpus.path)

    @cached_property
    def corpus(self) -> CorpusInfo:
        return check_corpus(self.spec.data.corpus, self.corpus_path)

    @cached_property
    def corpus_sha256(self) -> str:
        """sha256 of the corpus file's bytes: the validation pass's, or, before that pass has
        run, the file's own digest (the same bytes, read without parsing them)."""
        if "corpus" in self.__dict__:
            return self.corpus.sha256
        return file_digest(self.corpus_path)

    @property
    def corpus_reading(self) -> str:
        """How the corpus file is read into documents (format and field names, not its path): the
        same bytes read the same way are the same documents."""
        import hashlib
        import json

        fields = self.spec.data.corpus.model_dump(mode="json", exclude={"path"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @cached_property
    def queries(self) -> dict[str, str] | None:
        source = self.spec.data.queries
        return load_queries(source, self.spec.resolve(source.path)) if source else None

    def split_names(self) -> list[str]:
        return (["train"] if self.spec.data.train else []) + list(self.spec.data.splits)

    def labels(self, split: str) -> Labels:
        """Labels of `train` or of a named held-out split, checked against the corpus."""
        if split not in self._labels:
            if split == "train" and self.spec.data.train is not None and split not in self.spec.data.splits:
                source = self.spec.data.train
            elif split in self.spec.data.splits:
                source = self.spec.data.splits[split]
            else:
                raise DataError("spec", f"no labels named {split!r}; known: {self.split_names()}")
            path = self.spec.resolve(source.path)
            self._labels[split] = load_labels(
                source, path, self.corpus.ids, self.queries, self.spec.data.on_bad_labels
            )
            if self._labels[split].dropped:
                log.warning("%s: dropped labels naming unknown ids (on_bad_labels: skip): %s",
                            path, self._labels[split].dropped)
        return self._labels[split]

    def check_files(self) -> dict[str, int]:
        """Every data file the spec names exists, is readable and starts as its format says
        (the first records parsed), without reading it whole: `vectune validate`'s data check.

        Returns each file's size in bytes (-1 where the filesystem does not say).
        """
        from itertools import islice

        from vectune.data._files import filesystem, iter_lines, read_records
        from vectune.data.corpus import _records

        data = self.spec.data
        out: dict[str, int] = {}
        checks = [(self.corpus_path, lambda path: _records(data.corpus, path, None))]
        for source in [data.queries, data.train, *data.splits.values()]:
            if source is None:
                continue
            qrels = getattr(source, "format", None) == "qrels"
            reader = (lambda path: iter_lines(path)) if qrels else (lambda path: read_records(path))
            checks.append((self.spec.resolve(source.path), reader))
        for path, reader in checks:
            if path in out:
                continue
            first = list(islice(reader(path), 2))
            if not first:
                raise DataError(path, "the file is empty")
            fs, inner = filesystem(path)
            out[path] = fs.get_file_info(inner).size or -1
        return out

    def corpus_dataset(self, blocks: int | None = None):
        """The corpus as a Ray Dataset (doc_id, title, text), streamed, never collected."""
        self.corpus  # validate first: Ray workers assume clean input
        return read_corpus(self.spec.data.corpus, self.corpus_path, blocks=blocks)

    def text_batches(self, size: int = 1000):
        """(document ids, texts) batches of at most `size`, streamed through Ray Data (the dataset
        every stage reads: its `text` is title, a space and text), never collected."""
        for batch in self.corpus_dataset().iter_batches(batch_format="numpy", batch_size=size):
            yield [str(d) for d in batch["doc_id"]], [str(t) for t in batch["text"]]

    def corpus_batches(self, size: int = 4096):
        """The corpus in this process, `size` documents at a time (`corpus.iter_corpus`: the
        Dataset's columns, one batch held at a time); no Ray. Before the validation pass has
        run, the batches come from it (`corpus.checked_batches`): a bad document raises as it is
        read, a repeated id once the last batch is taken, and `corpus` is known from then on,
        so a caller must act on the batches only after it has taken them all."""
        if "corpus" in self.__dict__:
            return iter_corpus(self.spec.data.corpus, self.corpus_path, size)
        return self._checking(size)

    def _checking(self, size: int):
        done: list[CorpusInfo] = []
        yield from checked_batches(self.spec.data.corpus, self.corpus_path, size, done)
        self.__dict__["corpus"] = done[0]

    def documents(self, ids: set[str], blocks: int | None = None) -> dict[str, str]:
        """The texts (title, a space, text) of `ids`, from one streaming pass over the corpus
        (Ray must be running); only the asked-for documents are ever held."""
        import ray

        wanted = ray.put(set(ids))

        def keep(batch):
            want = ray.get(wanted)
            rows = [(d, t) for d, t in zip(batch["doc_id"], batch["text"]) if d in want]
            return {"doc_id": [d for d, _ in rows], "text": [t for _, t in rows]}

        out: dict[str, str] = {}
        for batch in self.corpus_dataset(blocks=blocks).map_batches(keep, num_cpus=0.1).iter_batches(
                batch_format="numpy", batch_size=4096):
            out.update(zip((str(d) for d in batch["doc_id"]), (str(t) for t in batch["text"])))
        return out

    def file_hashes(self) -> dict[str, str]:
        """sha256 of every data file the spec names (the corpus hash comes from its check)."""
        data = self.spec.data
        out = {self.corpus_path: self.corpus.sha256}
        sources = [data.queries, data.train, *data.splits.values()]
        for source in sources:
            if source is not None:
                path = self.spec.resolve(source.path)
                out.setdefault(path, file_digest(path))
        return out
