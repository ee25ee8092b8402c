"""Thumbnails of PNG, JPEG, GIF and WebP images, in PocketBase's size spellings, cached on local disk.

`WxH` crops to exactly W×H from the center, `WxHt` from the top, `WxHb` from the bottom; `WxHf` fits
inside W×H without cropping; `0xH` and `Wx0` resize to that height or width, keeping the aspect ratio.

Decoding PNG and JPEG needs a real image library: Pillow, an OPTIONAL dependency
(`pip install snackbase[thumbs]`). Its wheels are ~22 MB installed (7 MB of code, 15 MB of bundled
libjpeg/libpng/libwebp/…), more than the executable's whole budget, so the one-file executable does
not include it. Without Pillow a thumbnail request serves the original image (with
`X-Thumb: unavailable`), as PocketBase does for formats it cannot thumbnail.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from functools import lru_cache
from typing import Any

SPEC_RE = re.compile(r"([0-9]{1,4})x([0-9]{1,4})([tbf]?)")
THUMBABLE = frozenset(("image/png", "image/jpeg", "image/gif", "image/webp"))
ALWAYS_ALLOWED = frozenset(("100x100",))  # the admin UI's previews
MAX_PIXELS = 50_000_000  # refuse decompression bombs: a 50 MP image decodes to ~150 MB
MAX_SOURCE_BYTES = 50_000_000  # larger images are served as they are, never read whole into memory


@lru_cache(maxsize=1)
def pillow() -> Any:
    try:
        from PIL import Image, ImageOps

        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        return Image, ImageOps
    except ImportError:
        return None


def available() -> bool:
    return pillow() is not None


@lru_cache(maxsize=256)  # every thumbnail request parses its spec; few distinct ones are ever asked for
def parse(spec: str) -> tuple[int, int, str] | None:
    match = SPEC_RE.fullmatch(spec)
    if match is None or (match.group(1) == "0" and match.group(2) == "0"):
        return None
    return int(match.group(1)), int(match.group(2)), match.group(3)


def output_type(mime: str) -> str:
    """A thumbnail's type: JPEG and WebP stay, PNG and GIF (its first frame) become PNG."""
    return mime if mime in ("image/jpeg", "image/webp") else "image/png"


def make(data: bytes, spec: str, mime: str) -> bytes:
    """The thumbnail's bytes, of type `output_type(mime)`."""
    loaded = pillow()
    parsed = parse(spec)
    assert loaded is not None and parsed is not None
    image_mod, ops = loaded
    width, height, mode = parsed
    with image_mod.open(io.BytesIO(data)) as img:
        if img.size[0] * img.size[1] > MAX_PIXELS:  # known from the header, before decoding
            raise ValueError("too many pixels to thumbnail")
        img = ops.exif_transpose(img)
        if img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA" if "transparency" in img.info or img.mode == "P" else "RGB")
        w0, h0 = img.size
        if width == 0:
            size = (max(1, round(w0 * height / h0)), height)
            out = img.resize(size, image_mod.Resampling.LANCZOS)
        elif height == 0:
            size = (width, max(1, round(h0 * width / w0)))
            out = img.resize(size, image_mod.Resampling.LANCZOS)
        elif mode == "f":
            out = img.copy()
            out.thumbnail((width, height), image_mod.Resampling.LANCZOS)
        else:
            centering = {"t": (0.5, 0.0), "b": (0.5, 1.0)}.get(mode, (0.5, 0.5))
            out = ops.fit(img, (width, height), image_mod.Resampling.LANCZOS, centering=centering)
        fmt = {"image/jpeg": "JPEG", "image/webp": "WEBP"}.get(output_type(mime), "PNG")
        if fmt == "JPEG" and out.mode not in ("RGB", "L"):
            out = out.convert("RGB")
        buffer = io.BytesIO()
        out.save(buffer, fmt, quality=85) if fmt != "PNG" else out.save(buffer, fmt, optimize=False)
        return buffer.getvalue()


RECENT_BYTES = 8 * 1024 * 1024  # per process; allocated as thumbnails are served, so idle memory is unchanged


class Recent:
    """The thumbnails served last, kept in memory up to `budget` bytes (the least recently served go
    first): reading a cached thumbnail from disk (the path, open, read, close) was ~20% of the CPU of a
    thumbnail request. A stored file's key never gets other content (stored names carry a random
    suffix), so an entry never goes stale; one whose file was removed is never asked for again (the
    record no longer names it) and ages out. Used on the event loop only."""

    def __init__(self, budget: int = RECENT_BYTES) -> None:
        self.budget = budget
        self.size = 0
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def get(self, key: str, spec: str) -> bytes | None:
        data = self._items.get((key, spec))
        if data is not None:
            self._items.move_to_end((key, spec))
        return data

    def put(self, key: str, spec: str, data: bytes) -> None:
        if len(data) > self.budget // 64:
            return  # a big thumbnail (a large `WxH`) stays on disk only: it would push out many
        old = self._items.pop((key, spec), None)
        self.size += len(data) - (len(old) if old is not None else 0)
        self._items[(key, spec)] = data
        while self.size > self.budget:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)
