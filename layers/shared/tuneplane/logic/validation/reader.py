"""Turn a byte stream (plain or gzip JSONL, local or S3) into numbered lines, in constant memory."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
_READ_BUFFER = 1 << 20
# Signatures of compressions we do not read, so the error names the real cause instead of "not UTF-8".
UNSUPPORTED_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"\x04\x22\x4d\x18": "lz4",
}
UNSUPPORTED_ENCODING_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}
UNSUPPORTED_SUFFIXES = {".bz2": "bzip2", ".xz": "xz", ".zst": "zstd", ".zip": "zip", ".7z": "7z", ".lz4": "lz4"}


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class UnsupportedEncodingError(Exception):
    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding


class UnsupportedCompressionError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line over the byte limit; only its size is kept, never its content."""

    size: int


class _RawAdapter(io.RawIOBase):
    """Lets io.BufferedReader (fast C readline) sit on anything with read(n), e.g. botocore's StreamingBody."""

    def __init__(self, source: Readable) -> None:
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_stream(source: Readable, name: str) -> io.BufferedIOBase:
    """Buffered, decompressed view of `source`; raises UnsupportedCompressionError for bz2/xz/zstd/zip/..."""
    lowered = name.lower()
    for suffix, kind in UNSUPPORTED_SUFFIXES.items():
        if lowered.endswith(suffix):
            raise UnsupportedCompressionError(kind)
    buffered = io.BufferedReader(_RawAdapter(source), buffer_size=_READ_BUFFER)
    head = buffered.peek(8)[:8]
    for magic, kind in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise UnsupportedCompressionError(kind)
    for bom, encoding in UNSUPPORTED_ENCODING_BOMS.items():
        if head.startswith(bom):
            raise UnsupportedEncodingError(encoding)
    if head.startswith(GZIP_MAGIC):
        # GzipFile reads through its own internal BufferedReader, so readline stays in C.
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    return buffered


def iter_lines(stream: io.BufferedIOBase, max_line_bytes: int) -> Iterator[tuple[int, bytes | LongLine]]:
    """Yield (1-based line number, line without its line ending) or a LongLine marker; never holds more
    than `max_line_bytes` + one buffer in memory, whatever the line lengths."""
    readline = stream.readline
    limit = max_line_bytes + 1
    lineno = 0
    while True:
        line = readline(limit)
        if not line:
            return
        lineno += 1
        if lineno == 1 and line.startswith(UTF8_BOM):
            line = line[len(UTF8_BOM) :]
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        elif len(line) >= limit:
            size = len(line)
            while True:  # skip the rest of the over-long line chunk by chunk
                chunk = readline(_READ_BUFFER)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield lineno, LongLine(size)
            continue
        yield lineno, line
