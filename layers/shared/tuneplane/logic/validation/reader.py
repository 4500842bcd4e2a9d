"""Turn a byte stream (plain or gzip JSONL, local or S3) into numbered lines, in constant memory and time per byte.

Hostile input (issue 15) shaped this module:

* Lines are split out of fixed-size chunks, so a line over ``max_line_bytes`` is skipped to its ``\\n`` without
  ever being held, and a run of blank lines (a few KB of gzip can hold a billion of them) is counted by a regular
  expression and ``bytes.count`` in C and handed on as one :class:`BlankLines` marker instead of one Python
  iteration (and one reported problem) per line.
* ``on_chunk`` sees every decompressed chunk before it is split, so the caller can stop a decompression bomb or a
  run out of time while streaming, before the work is done.
* The first decompressed chunk is sniffed: UTF-16/UTF-32 (with or without a byte order mark) and old-Mac CR-only
  line endings are named as such, with the command that converts them, instead of surfacing as one huge bad
  line or a column of "unexpected character" errors.
* A read of the source that fails for a reason that is not the data's (an S3 read timeout, a reset connection)
  is retried by re-opening the source at the byte offset reached, when the source can do that (an S3 ranged
  GET); when it still fails, :class:`SourceReadError` says so, so that it is reported as a platform fault and
  never as a corrupt file.
"""

from __future__ import annotations

import ast
import gzip
import http.client
import io
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import botocore.exceptions
import urllib3.exceptions

from tuneplane.errors import StorageError

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 1 << 20
_READ_BUFFER = 1 << 20
_SNIFF_BYTES = 4096
# Signatures of compressions we do not read, so the error names the real cause instead of "not UTF-8".
UNSUPPORTED_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"\x04\x22\x4d\x18": "lz4",
}
# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
UNSUPPORTED_ENCODING_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32LE",
    b"\x00\x00\xfe\xff": "UTF-32BE",
    b"\xff\xfe": "UTF-16LE",
    b"\xfe\xff": "UTF-16BE",
}
UNSUPPORTED_SUFFIXES = {".bz2": "bzip2", ".xz": "xz", ".zst": "zstd", ".zip": "zip", ".7z": "7z", ".lz4": "lz4"}
# Blank lines hold only ASCII whitespace (what bytes.isspace() accepts). _BLANK_LINES_HERE matches, at a line start,
# a blank line and all whitespace after it (the run ends at its last "\n"); _NEXT_BLANK_LINE finds the end of a line
# followed by a blank one. Only character classes: the regex engine runs them as C loops (a group repeated per line
# costs about 40 times more).
_BLANK_LINES_HERE = re.compile(rb"[ \t\r\x0b\x0c]*\n[ \t\r\n\x0b\x0c]*")
_NEXT_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
# Failures of the transport, not of the data: worth a retry from the offset reached. botocore's StreamingBody
# turns urllib3's read timeout into botocore's ReadTimeoutError (an OSError: it also derives from the vendored
# requests' IOError, which is why a timeout used to be reported as a corrupt gzip) and a ProtocolError (a reset
# connection) into ResponseStreamingError; a body shorter than its Content-Length is IncompleteReadError.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    StorageError,  # the adapter's answer to a failed (re-)open: throttling, a 5xx
)
# What a corrupt or truncated gzip stream raises: BadGzipFile (an OSError), EOFError, zlib.error.
CORRUPT_GZIP_ERRORS: tuple[type[BaseException], ...] = (gzip.BadGzipFile, EOFError, zlib.error)
# gzip's message when the bytes after a member are not another member's header ("Not a gzipped file (b'ga')").
_NOT_GZIP = re.compile(r"^Not a gzipped file \((b'.{0,16}'|b\".{0,16}\")\)$")


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# Opens the same object again, starting at a byte offset (an S3 GET with a Range header).
Reopen = Callable[[int], Readable]


class UnsupportedEncodingError(Exception):
    def __init__(self, encoding: str, how_to_convert: str = "") -> None:
        super().__init__(encoding)
        self.encoding = encoding
        self.how_to_convert = how_to_convert or f"iconv -f {encoding} -t UTF-8 in.jsonl > out.jsonl"


class UnsupportedLineEndingsError(Exception):
    """Old-Mac line endings: lines ended by a lone CR, so the whole file would read as one line."""


class UnsupportedCompressionError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class SourceReadError(Exception):
    """Reading the source failed `attempts` times at compressed byte `offset`: the transport's fault, not the
    data's."""

    def __init__(self, offset: int, attempts: int, cause: BaseException) -> None:
        super().__init__(
            f"read failed at byte {offset:,} after {attempts} attempt(s): {type(cause).__name__}: {cause}"
        )
        self.offset = offset
        self.attempts = attempts
        self.cause = cause


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line over the byte limit; only its size (line ending included) is kept, never its content."""

    size: int


@dataclass(frozen=True, slots=True)
class BlankLines:
    """`count` consecutive blank (empty or whitespace-only) lines, the first of them at the yielded line number."""

    count: int


@dataclass
class ReadProgress:
    """Bytes taken from the source (compressed, as stored) so far; the raw adapter keeps it current.

    ``consumed()`` is how many of them the decompressor has used: the read-ahead buffer (1 MiB) is not counted, so
    that a small gzip bomb, read whole by the first fill of the buffer, is not credited with a megabyte it has not.
    """

    compressed: int = 0
    position: Callable[[], int] | None = None

    def consumed(self) -> int:
        return self.position() if self.position is not None else self.compressed


def _pause(seconds: float) -> None:
    """The wait between read attempts (a function of its own, so a test can record it instead of waiting)."""
    time.sleep(seconds)


class _RawAdapter(io.RawIOBase):
    """Lets io.BufferedReader sit on anything with read(n), e.g. botocore's StreamingBody; counts the bytes read and
    retries transient read failures by re-opening the source at the offset reached (when `reopen` is given)."""

    def __init__(
        self,
        source: Readable,
        progress: ReadProgress,
        reopen: Reopen | None,
        retries: int,
        retry_delay_s: float,
    ) -> None:
        self._source: Readable | None = source
        self._original = source  # the caller's: closed by the caller, not here
        self._progress = progress
        self._reopen = reopen
        self._retries = retries
        self._retry_delay_s = retry_delay_s

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """Bytes read so far: lets io.BufferedReader.tell() say how many of them its reader has consumed."""
        return self._progress.compressed

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        failures = 0
        while True:
            try:
                if self._source is None:
                    assert self._reopen is not None
                    self._source = self._reopen(self._progress.compressed)
                data = self._source.read(len(buffer))
                break
            except TRANSIENT_ERRORS as exc:
                failures += 1
                self._drop_source()
                if self._reopen is None or failures > self._retries:
                    raise SourceReadError(self._progress.compressed, failures, exc) from exc
                _pause(self._retry_delay_s * 2 ** (failures - 1))
        buffer[: len(data)] = data
        self._progress.compressed += len(data)
        return len(data)

    def _drop_source(self) -> None:
        source, self._source = self._source, None
        if source is not None and source is not self._original:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # a broken connection may fail to close too; it is dropped anyway
                    pass

    def close(self) -> None:
        self._drop_source()
        super().close()


class _GzipStream(gzip.GzipFile):
    """A GzipFile that closes the buffered source under it too (GzipFile leaves a passed-in fileobj open), so a
    source re-opened after a transient failure is closed with the stream."""

    def __init__(self, under: io.BufferedReader[_RawAdapter]) -> None:
        super().__init__(fileobj=under, mode="rb")
        self._under = under
        self._deferred: BaseException | None = None
        self.junk_at: int | None = None  # compressed byte where bytes that are not gzip follow a complete member

    def read(self, size: int | None = -1) -> bytes:
        """GzipFile.read, except that the data of complete members before junk that is not gzip is returned first
        and the error raised by the next read. GzipFile.read(n) fills its n bytes through io.BufferedReader, which
        drops what it already decompressed when a later raw read fails: junk after the last gzip member (trailing
        garbage) then lost the whole last chunk, and was reported "after line 0" for a file smaller than a chunk."""
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        if size is None or size < 0:
            return super().read(size)
        parts: list[bytes] = []
        got = 0
        while got < size:
            try:
                part = self.read1(size - got)  # at most one decompression step: nothing decompressed is dropped
            except CORRUPT_GZIP_ERRORS as exc:
                self._note_junk(exc)
                # Only junk after a member keeps what came before: that data passed the member's CRC check. Bytes
                # zlib produced before it found a corrupt stretch mid-member are not trusted (dropped as before).
                if not parts or self.junk_at is None:
                    raise
                self._deferred = exc
                break
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _note_junk(self, error: BaseException) -> None:
        """Where bytes that are not a gzip header follow a complete member: GzipFile reads the next member's magic
        (2 bytes) from its padded view of the source, which holds back the bytes the decompressor did not use."""
        match = _NOT_GZIP.search(str(error))
        if not isinstance(error, gzip.BadGzipFile) or match is None:
            return
        try:
            magic = ast.literal_eval(match.group(1))
            padded = self._buffer.raw._fp  # type: ignore[attr-defined]  # gzip._GzipReader's _PaddedFile
            held_back = 0 if padded._read is None else padded._length - padded._read
            self.junk_at = max(0, self._under.tell() - held_back - len(magic))
        except (AttributeError, TypeError, ValueError, SyntaxError):  # another Python's gzip internals
            self.junk_at = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._under.close()


def open_stream(
    source: Readable,
    name: str,
    *,
    progress: ReadProgress | None = None,
    reopen: Reopen | None = None,
    retries: int = 3,
    retry_delay_s: float = 0.5,
) -> io.BufferedIOBase:
    """Buffered, decompressed view of `source`; raises UnsupportedCompressionError for bz2/xz/zstd/zip/...

    With `reopen`, a transient read failure is retried up to `retries` times (delays `retry_delay_s`, doubling) by
    reading the rest of the object from the offset reached; without it, or when the retries are spent, the read
    raises SourceReadError. `progress`, when given, counts the (compressed) bytes taken from `source`.
    """
    lowered = name.lower()
    for suffix, kind in UNSUPPORTED_SUFFIXES.items():
        if lowered.endswith(suffix):
            raise UnsupportedCompressionError(kind)
    progress = progress or ReadProgress()
    raw = _RawAdapter(source, progress, reopen, retries, retry_delay_s)
    buffered = io.BufferedReader(raw, buffer_size=_READ_BUFFER)
    progress.position = buffered.tell
    head = buffered.peek(8)[:8]
    for magic, kind in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise UnsupportedCompressionError(kind)
    if head.startswith(GZIP_MAGIC):
        return _GzipStream(buffered)
    return buffered


def sniff(head: bytes) -> bytes:
    """`head` (the first decompressed chunk) without a UTF-8 byte order mark; raises for UTF-16/32 and CR-only.

    A valid UTF-8 JSONL file holds no NUL byte (JSON escapes control characters), while UTF-16 text of JSON (mostly
    ASCII: braces, quotes, keys) has a NUL in every other byte and UTF-32 in three of four; where the NULs sit says
    the byte order, so a file saved without a byte order mark is named as well as one with it.
    """
    for bom, encoding in UNSUPPORTED_ENCODING_BOMS.items():
        if head.startswith(bom):
            raise UnsupportedEncodingError(encoding)
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :]
    sample = head[: _SNIFF_BYTES - _SNIFF_BYTES % 4]
    sample = sample[: len(sample) - len(sample) % 4]
    if len(sample) >= 4 and b"\x00" in sample:
        quarter = len(sample) // 4
        nul = [sample[offset::4].count(0) / quarter for offset in range(4)]  # share of NULs at each position mod 4
        odd, even = (nul[1] + nul[3]) / 2, (nul[0] + nul[2]) / 2
        if nul[2] > 0.9 and nul[3] > 0.9 and nul[0] < 0.1:  # ASCII "{" is 7b 00 00 00
            raise UnsupportedEncodingError("UTF-32LE")
        if nul[0] > 0.9 and nul[1] > 0.9 and nul[3] < 0.1:  # 00 00 00 7b
            raise UnsupportedEncodingError("UTF-32BE")
        if odd >= 0.1 and even < 0.05:  # 7b 00
            raise UnsupportedEncodingError("UTF-16LE")
        if even >= 0.1 and odd < 0.05:  # 00 7b
            raise UnsupportedEncodingError("UTF-16BE")
    if b"\r" in head and b"\n" not in head:
        raise UnsupportedLineEndingsError()
    return head


def iter_lines(
    stream: io.BufferedIOBase,
    max_line_bytes: int,
    on_chunk: Callable[[int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[int, bytes | LongLine | BlankLines]]:
    """Yield (1-based line number, line without its line ending), a LongLine marker for a line over `max_line_bytes`
    or a BlankLines marker for a run of blank lines (numbered by its first line).

    Holds at most one chunk plus `max_line_bytes` in memory whatever the line lengths; `on_chunk(n)` is called with
    the size of every decompressed chunk before any of its lines is yielded (it may raise to stop the read).
    """
    splitter = _Splitter(max_line_bytes)
    first = True
    while True:
        chunk = stream.read(chunk_bytes)
        if on_chunk is not None:
            on_chunk(len(chunk))
        if first:
            first = False
            chunk = sniff(chunk)
        if not chunk:
            break
        yield from splitter.feed(chunk)
    yield from splitter.finish()


Item = tuple[int, bytes | LongLine | BlankLines]


class _Splitter:
    """The state of iter_lines between chunks: a line cut by a chunk's end, an over-long line being skipped, a run
    of blank lines not yet handed on."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max = max_line_bytes
        self.lineno = 0  # lines started so far
        self.blanks = 0  # blank lines not yet yielded: lines lineno - blanks + 1 .. lineno
        self.pending = bytearray()  # the start of a line that continues in the next chunk
        self.overlong = 0  # bytes of an over-long line skipped so far (0: not skipping one)
        self.overlong_blank = False  # ... and it has held only whitespace so far: a blank line, however long

    def _line(self, line: bytes | LongLine) -> Iterator[Item]:
        """A line (or LongLine) numbered self.lineno, after the blank run before it."""
        if self.blanks:
            yield self.lineno - self.blanks, BlankLines(self.blanks)
            self.blanks = 0
        yield self.lineno, line

    def _carried(self, chunk: bytes) -> tuple[int, bytes | LongLine | None]:
        """Continue the line the previous chunk ended in: (where this chunk's own lines start, the finished line
        or None). A start past the chunk's end means the line goes on into the next chunk."""
        newline = chunk.find(b"\n")
        if newline < 0:
            if self.overlong:
                self.overlong += len(chunk)
                self.overlong_blank = self.overlong_blank and chunk.isspace()
            elif len(self.pending) + len(chunk) > self.max:
                self.overlong_blank = self.pending.isspace() and chunk.isspace()
                self.overlong, self.pending = len(self.pending) + len(chunk), bytearray()
            else:
                self.pending += chunk
            return len(chunk), None
        self.lineno += 1
        if self.overlong:
            size, self.overlong = self.overlong + newline + 1, 0
            if self.overlong_blank and (newline == 0 or chunk[:newline].isspace()):
                self.blanks += 1
                return newline + 1, None
            return newline + 1, LongLine(size)
        self.pending += chunk[:newline]
        line, self.pending = bytes(self.pending), bytearray()
        if not line or line.isspace():  # a blank line however long, as where it does not straddle chunks
            self.blanks += 1
            return newline + 1, None
        if len(line) > self.max:
            return newline + 1, LongLine(len(line) + 1)
        return newline + 1, line[:-1] if line.endswith(b"\r") else line

    def feed(self, chunk: bytes) -> Iterator[Item]:
        """The lines of one chunk: the stretches between runs of blank lines are split by bytes.split (in C), each
        run of blank lines is found by regular expressions made of character classes (C loops) and counted, never
        iterated in Python."""
        pos, end = 0, len(chunk)
        if self.overlong or self.pending:
            pos, carried = self._carried(chunk)
            if carried is not None:
                yield from self._line(carried)
        limit, lineno, blanks = self.max, self.lineno, self.blanks
        blank_here, next_blank = _BLANK_LINES_HERE.match, _NEXT_BLANK_LINE.search
        while pos < end:  # pos is at the start of a line
            here = blank_here(chunk, pos)
            if here is not None:  # whole blank lines up to the last "\n" of the whitespace
                last = chunk.rfind(b"\n", pos, here.end())
                run = chunk.count(b"\n", pos, last + 1)
                blanks += run
                lineno += run
                pos = last + 1
                continue
            found = next_blank(chunk, pos)
            stop = end if found is None else found.start() + 1
            lines = chunk[pos:stop].split(b"\n")
            tail = lines.pop()  # empty before a blank line; else the start of a line cut by the chunk's end
            for line in lines:  # none is blank
                lineno += 1
                if blanks:
                    yield lineno - blanks, BlankLines(blanks)
                    blanks = 0
                if len(line) > limit:
                    yield lineno, LongLine(len(line) + 1)
                elif line.endswith(b"\r"):
                    yield lineno, line[:-1]
                else:
                    yield lineno, line
            if tail:
                if len(tail) > limit:
                    self.overlong, self.overlong_blank = len(tail), tail.isspace()
                else:
                    self.pending = bytearray(tail)
            pos = stop
        self.lineno, self.blanks = lineno, blanks

    def finish(self) -> Iterator[Item]:
        """The last line, which has no line ending, and a blank run the file ends with."""
        if self.overlong:
            self.lineno += 1
            if self.overlong_blank:
                self.blanks += 1
            else:
                yield from self._line(LongLine(self.overlong))
        elif self.pending:
            self.lineno += 1
            if self.pending.isspace():
                self.blanks += 1
            else:
                pending = self.pending
                yield from self._line(bytes(pending[:-1] if pending.endswith(b"\r") else pending))
        if self.blanks:
            yield self.lineno - self.blanks + 1, BlankLines(self.blanks)
