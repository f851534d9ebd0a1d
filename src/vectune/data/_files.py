"""Open local paths and pyarrow-filesystem URIs alike; stream lines with numbers."""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterator

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
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise DataError(path, "file not found")
    if info.type == pafs.FileType.Directory:
        raise DataError(path, "is a folder, expected a file")
    return fs.open_input_stream(inner)


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
    try:
        return raw.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"bytes that are not UTF-8 at column {exc.start + 1}", number) from None


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open_input(path) as stream:
        while chunk := stream.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
