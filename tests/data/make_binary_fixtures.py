"""Regenerate the byte-exact fixtures under tests/data: gzip, BOM and CRLF variants of valid/chat.jsonl, and the
bad files whose defect is in the bytes (not UTF-8, UTF-16, CR line endings, bzip2, xz, zip, a truncated gzip, a gzip
bomb).

    python tests/data/make_binary_fixtures.py

Everything is derived from the committed text file valid/chat.jsonl and is deterministic (gzip mtime=0, fixed
zip timestamps), so running it again changes nothing; tests/unit/test_validation_corpus.py checks that the
committed files match what this script builds.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
from pathlib import Path

DATA = Path(__file__).resolve().parent
UTF8_BOM = b"\xef\xbb\xbf"
# The same example as the others but written by a Windows-1252 editor: 'é' is the single byte 0xE9.
CP1252_LINE = (
    '{"messages": [{"role": "user", "content": "Order a café au lait."}, {"role": "assistant", "content": "Done."}]}'
)
NOT_UTF8_LINE = 5


def _zip(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, payload)
    return buffer.getvalue()


def build(data: Path = DATA) -> dict[str, bytes]:
    """{path relative to tests/data: content}, all derived from valid/chat.jsonl."""
    chat = (data / "valid" / "chat.jsonl").read_bytes()
    lines = chat.splitlines(keepends=True)
    not_utf8 = lines[:12]
    not_utf8.insert(NOT_UTF8_LINE - 1, CP1252_LINE.encode("cp1252") + b"\n")
    gzipped = gzip.compress(chat, mtime=0)
    return {
        "valid/chat.jsonl.gz": gzipped,
        "valid/chat_bom.jsonl": UTF8_BOM + chat,
        "valid/chat_crlf.jsonl": chat.replace(b"\n", b"\r\n"),
        "bad/not_utf8.jsonl": b"".join(not_utf8),
        "bad/unsupported_compression_bzip2_magic.jsonl": bz2.compress(chat),
        "bad/unsupported_compression_xz_magic.jsonl": lzma.compress(chat, format=lzma.FORMAT_XZ),
        "bad/unsupported_compression_zip_suffix.jsonl.zip": _zip("chat.jsonl", chat),
        # what some Windows editors save: UTF-16 with a byte order mark
        "bad/unsupported_encoding_utf16.jsonl": chat.decode("utf-8").encode("utf-16"),
        # saved without a byte order mark: named from where the NULs sit, not reported line by line
        "bad/unsupported_encoding_utf16_no_bom.jsonl": chat.decode("utf-8").encode("utf-16-le"),
        # old Mac line endings: a lone CR ends each line
        "bad/unsupported_line_endings_cr.jsonl": chat.replace(b"\n", b"\r"),
        # 16 MiB of padding in 16 KB of gzip: a decompression bomb, stopped by its expansion
        "bad/compression_ratio_too_high.jsonl.gz": gzip.compress(chat + b"\n" * (16 << 20), mtime=0),
        # the 8-byte trailer (CRC32 and size) cut off: every line decompresses, then the stream ends early
        "bad/unsupported_compression_truncated.jsonl.gz": gzipped[:-8],
    }


def main() -> None:
    for relative, content in build().items():
        (DATA / relative).write_bytes(content)
        print(f"wrote tests/data/{relative} ({len(content)} bytes)")


if __name__ == "__main__":
    main()
