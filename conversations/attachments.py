"""Attachments: identify uploads by their bytes, enforce the API's limits,
prepare what is sent upstream, and store each file once per owner.

Images are inspected with Pillow and PDFs with pypdf; a file's name and the
browser's claimed type are never trusted.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import IO

from django.core.files.base import ContentFile, File
from django.db import IntegrityError, transaction
from PIL import Image, UnidentifiedImageError
from pypdf import PdfReader
from pypdf.errors import PdfReadError

MB = 1024 * 1024
MAX_UPLOAD_BYTES = 32 * MB  # the API's whole-request limit: no single file can exceed it
MAX_IMAGE_BYTES = 5 * MB  # per image, as sent
MAX_IMAGE_SIDE = 8000  # px
MAX_USEFUL_EDGE = 1568  # px: the API downscales anything larger anyway
MAX_PDF_PAGES = 100
MAX_PDF_BYTES = 32 * MB
IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
PDF = "application/pdf"

# Pillow's own guard against decompression bombs, at the API's largest image:
# anything claiming more pixels is refused before it is decoded.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE


class Refused(Exception):
    """An upload that cannot be sent; the message names the file and the reason."""


@dataclass
class Inspected:
    media_type: str
    width: int | None = None
    height: int | None = None
    page_count: int | None = None
    sent_bytes: bytes | None = None  # a smaller version to send instead of the original
    sent_media_type: str = ""


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < MB:
        return f"{n / 1024:.0f} KB"
    return f"{n / MB:.1f} MB"


def inspect(name: str, data: IO[bytes], size: int) -> Inspected:
    """Identify and check one upload; raise Refused with a sentence naming it."""
    if size == 0:
        raise Refused(f"{name} is empty.")
    if size > MAX_UPLOAD_BYTES:
        raise Refused(f"{name} is {human_size(size)}; files can be at most 32 MB.")
    data.seek(0)
    head = data.read(1024)
    data.seek(0)
    if b"%PDF-" in head:
        return _inspect_pdf(name, data, size)
    return _inspect_image(name, data)


def _inspect_pdf(name: str, data: IO[bytes], size: int) -> Inspected:
    if size > MAX_PDF_BYTES:
        raise Refused(f"{name} is {human_size(size)}; PDFs can be at most 32 MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(data, strict=False)
            if reader.is_encrypted:
                raise Refused(f"{name} is password-protected; remove the password and attach it again.")
            pages = len(reader.pages)
            if pages == 0:
                raise Refused(f"{name} has no pages.")
            reader.pages[pages - 1].mediabox  # the page tree really resolves to the last page
    except Refused:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OSError) as exc:
        raise Refused(f"{name} is not a readable PDF (it may be damaged or incomplete).") from exc
    if not _ends_like_a_pdf(data, size):
        raise Refused(f"{name} is not a readable PDF (it may be damaged or incomplete).")
    if pages > MAX_PDF_PAGES:
        raise Refused(f"{name} has {pages} pages; PDFs can have at most {MAX_PDF_PAGES}.")
    return Inspected(media_type=PDF, page_count=pages)


def _ends_like_a_pdf(data: IO[bytes], size: int) -> bool:
    """A complete PDF ends with %%EOF (give or take trailing whitespace); a cut one does not."""
    data.seek(max(0, size - 2048))
    tail = data.read()
    data.seek(0)
    return b"%%EOF" in tail


def _inspect_image(name: str, data: IO[bytes]) -> Inspected:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data, formats=list(IMAGE_FORMATS)) as image:
                media_type = IMAGE_FORMATS[image.format]
                width, height = image.size
                if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
                    raise Refused(
                        f"{name} is {width}×{height} pixels; images can be at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE}."
                    )
                image.load()  # decodes every byte: a truncated or corrupt file fails here
                sent, sent_type = _downscaled(image, media_type)
    except Refused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Refused(
            f"{name} would decompress to hundreds of megapixels (a decompression bomb) and was refused."
        ) from exc
    except UnidentifiedImageError as exc:
        raise Refused(f"{name} is not a JPEG, PNG, GIF, WebP or PDF file.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise Refused(f"{name} is damaged or incomplete and cannot be read as an image.") from exc
    data.seek(0, io.SEEK_END)
    original_size = data.tell()
    data.seek(0)
    if sent is None and original_size > MAX_IMAGE_BYTES:
        sent, sent_type = _reencoded(image_from(data), media_type)
    if sent is not None and len(sent) > MAX_IMAGE_BYTES:
        raise Refused(f"{name} is larger than 5 MB even after resizing; the API accepts images up to 5 MB.")
    return Inspected(media_type=media_type, width=width, height=height, sent_bytes=sent, sent_media_type=sent_type)


def image_from(data: IO[bytes]) -> Image.Image:
    image = Image.open(data)
    image.load()
    return image


def _downscaled(image: Image.Image, media_type: str) -> tuple[bytes | None, str]:
    """A copy whose long edge is at most 1568 px, or None when it already fits.

    GIFs send their first frame (the API uses only that), as PNG.
    """
    if max(image.size) <= MAX_USEFUL_EDGE:
        return None, ""
    copy = image.copy()
    copy.thumbnail((MAX_USEFUL_EDGE, MAX_USEFUL_EDGE), Image.Resampling.LANCZOS)
    return _encode(copy, media_type)


def _reencoded(image: Image.Image, media_type: str) -> tuple[bytes, str]:
    """Small enough in pixels but too many bytes: a JPEG of it (PNG keeps transparency)."""
    if image.mode in ("RGBA", "LA", "P") and media_type != "image/jpeg":
        return _encode(image, "image/webp")
    return _encode(image.convert("RGB"), "image/jpeg")


def _encode(image: Image.Image, media_type: str) -> tuple[bytes, str]:
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.convert("RGB").save(out, "JPEG", quality=88, optimize=True)
    elif media_type == "image/webp":
        image.save(out, "WEBP", quality=88)
    else:  # PNG, and GIF's first frame as PNG
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            image = image.convert("RGBA")
        image.save(out, "PNG", optimize=True)
        media_type = "image/png"
    return out.getvalue(), media_type


def sha256_of(data: IO[bytes]) -> str:
    digest = hashlib.sha256()
    data.seek(0)
    for chunk in iter(lambda: data.read(1024 * 1024), b""):
        digest.update(chunk)
    data.seek(0)
    return digest.hexdigest()


def store(owner, name: str, upload: File):
    """Inspect an upload and store it once per owner and content; returns the Attachment."""
    from .models import Attachment

    name = (name or "file").replace("\\", "/").rsplit("/", 1)[-1][:200] or "file"
    info = inspect(name, upload, upload.size)
    digest = sha256_of(upload)
    existing = Attachment.objects.filter(owner=owner, sha256=digest).first()
    if existing is not None:
        return existing
    attachment = Attachment(
        owner=owner,
        original_name=name,
        media_type=info.media_type,
        size=upload.size,
        sha256=digest,
        width=info.width,
        height=info.height,
        page_count=info.page_count,
        sent_media_type=info.sent_media_type,
        sent_size=len(info.sent_bytes) if info.sent_bytes is not None else None,
    )
    attachment.file.save(name, upload, save=False)
    if info.sent_bytes is not None:
        attachment.sent_file.save(name, ContentFile(info.sent_bytes), save=False)
    try:
        with transaction.atomic():
            attachment.save()
    except IntegrityError:  # the same bytes arrived twice at once: keep the first
        return Attachment.objects.get(owner=owner, sha256=digest)
    return attachment
