"""Real files for attachment tests, made on the spot."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image
from pypdf import PdfWriter


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), color=(200, 80, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress well (random pixels)."""
    import os

    out = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(out, "PNG")
    return out.getvalue()


def pdf_bytes(pages: int = 2, password: str | None = None) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=200)
    if password:
        writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims an enormous image: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 16)  # a few rows of zeros; the rest would follow
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")
