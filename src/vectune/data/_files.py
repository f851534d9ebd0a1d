"""Open local paths and pyarrow-filesystem URIs alike; stream lines, or JSONL/parquet
records, with their numbers (for errors that name the line)."""

from __future__ import annotations

import hashlib
import json
from typing import BinaryIO, Iterator, Sequence

import pyarrow.fs as pafs

from vectune.errors import DataError


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for a path or URI, and the path inside it."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError variants
            raise DataError(path, f"cannot open this URI: {exc}") from None
    return pafs.LocalFileSystem(), path


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner).type != pafs.FileType.NotFound
    except OSError:
        return False


def open_input(path: str) -> BinaryIO:
    fs, inner = filesystem(path)
    try:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise DataError(path, "file not found")
        if info.type == pafs.FileType.Directory:
            raise DataError(path, "is a folder, expected a file")
        return fs.open_input_stream(inner)
    except OSError as exc:  # permission denied, a broken mount, a bucket that refuses
        raise DataError(path, f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None


def iter_lines(path: str, hasher: "hashlib._Hash | None" = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each non-blank line, decoded as UTF-8.

    CRLF and LF both end a line. Bytes that are not UTF-8 raise DataError naming the line.
    """
    with open_input(path) as stream:
        pending = b""
        number = 0
        while True:
            chunk = stream.read(1 << 20)
            if hasher is not None and chunk:
                hasher.update(chunk)
            if not chunk:
                if pending:
                    number += 1
                    text = _decode(path, number, pending)
                    if text.strip():  # a last line without a newline, unless blank
                        yield number, text
                return
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                number += 1
                text = _decode(path, number, raw)
                if text.strip():
                    yield number, text


def _decode(path: str, number: int, raw: bytes) -> str:
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark some editors write
        raw = raw[3:]
    try:
        return raw.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"bytes that are not UTF-8 at column {exc.start + 1}", number) from None


def file_digest(path: str, hasher: "hashlib._Hash | None" = None) -> str:
    """sha256 of a file's bytes (fed into `hasher` when one is given)."""
    h = hasher if hasher is not None else hashlib.sha256()
    with open_input(path) as stream:
        while chunk := stream.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def is_parquet(path: str) -> bool:
    return path.split("?")[0].lower().endswith((".parquet", ".pq"))


def read_records(path: str, *, parquet: bool | None = None, columns: Sequence[str] | None = None,
                 hasher: "hashlib._Hash | None" = None) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) from JSONL or parquet, with errors located.

    Args:
        parquet: the format (default: from the suffix).
        columns: parquet only: read these, and fail naming any that is missing.
        hasher: fed the file's bytes as it is read (the corpus' content hash).
    """
    import pyarrow.parquet as pq

    if parquet is None:
        parquet = is_parquet(path)
    if parquet:
        if hasher is not None:
            file_digest(path, hasher)
        fs, inner = filesystem(path)
        try:
            pf = pq.ParquetFile(fs.open_input_file(inner))
        except Exception as exc:
            raise DataError(path, f"not a readable parquet file: {exc}") from None
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(path, f"missing column(s) {missing}; has {pf.schema_arrow.names}")
        row = 0
        for batch in pf.iter_batches(columns=list(columns) if columns is not None else None, batch_size=8192):
            for record in batch.to_pylist():
                row += 1
                yield row, record
        return
    for number, line in iter_lines(path, hasher):
        try:
            record = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", number) from None
        except _NonStandard as exc:
            raise DataError(path, f"{exc} is not JSON (JSON has no NaN or Infinity)", number) from None
        if not isinstance(record, dict):
            raise DataError(path, "each line must be a JSON object", number)
        yield number, record


class _NonStandard(ValueError):
    pass


def _no_constant(name: str):
    # Python's json reads NaN, Infinity and -Infinity; no other JSON reader does
    raise _NonStandard(name)


def _kind(value) -> str:
    return {bool: "a boolean", dict: "an object", list: "a list", float: "a number"}.get(type(value), type(value).__name__)


def id_value(path: str, number: int, record: dict, name: str, *, what: str = "id") -> str | None:
    """An id field: a string or an integer (never a boolean, number with a fraction, list or
    object); None when absent or empty."""
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, f"{what} field {name!r} must be a string or an integer, not {_kind(value)}", number)
    text = str(value)
    return text if text.strip() else None


def text_value(path: str, number: int, record: dict, name: str) -> str | None:
    """A text field: a string, or absent/null (None); anything else is an error naming the field."""
    value = record.get(name)
    if value is None or isinstance(value, str):
        return value
    raise DataError(path, f"field {name!r} must be a string, not {_kind(value)}", number)
