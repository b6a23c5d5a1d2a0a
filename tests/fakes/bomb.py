"""A decompression-bomb PNG: a header that claims a huge image, a few dozen bytes on disk."""
from __future__ import annotations

import struct
import zlib


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """PNG bytes whose header says width x height RGB pixels; PIL refuses it at open (DecompressionBombError)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
