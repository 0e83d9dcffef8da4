"""Encoded images for tests that the intake must refuse before decoding them."""

from __future__ import annotations

import struct
import zlib


def png_claiming(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (``depth`` bits, PNG ``colour`` type) over a
    few bytes of pixel data: what it would decode to is the header's word alone."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + header
        + struct.pack(">I", zlib.crc32(b"IHDR" + header))
        + struct.pack(">I", len(data))
        + b"IDAT"
        + data
        + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    )
