"""Asterisk core English prompts (Debian, CC-BY-SA-3.0): real speech clips with exact transcripts."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from edge_glass.core.errors import MediaError
from edge_glass.data.sources.base import Candidate, Source, file_stamp
from edge_glass.data.sources.registry import register_source

LICENSE = "CC-BY-SA-3.0"
ATTRIBUTION = "Asterisk core sounds (English, voice of Allison Smith), Digium/Sangoma. License: CC BY-SA 3.0"

_BRACKETED = re.compile(r"^\s*\[.*\]\s*$")


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Parse ``key: text`` lines of core-sounds-en.txt(.gz); comments and blank lines skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"asterisk transcripts not found: {path} (apt-get install asterisk-core-sounds-en, "
            "or set download.asterisk.transcripts)"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    out = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip() or line.startswith(";") or ":" not in line:
                continue
            key, text = line.split(":", 1)
            out.setdefault(key.strip(), text.strip())
    return out


@register_source("asterisk")
class AsteriskSource(Source):
    """The Asterisk core English prompts: real speech (8 kHz) with exact transcripts."""

    audio_kind = "speech: a human recording of the caption (its transcript)"
    license = LICENSE
    attribution = ATTRIBUTION

    def settings(self):
        return self.params.asterisk.model_dump()

    def candidates(self):
        p = self.params.asterisk
        sounds = Path(p.sounds_dir)
        if not sounds.is_dir():
            raise FileNotFoundError(
                f"asterisk sounds not found: {sounds} (apt-get install asterisk-core-sounds-en-wav, "
                "or set download.asterisk.sounds_dir)"
            )
        transcripts = read_transcripts(p.transcripts)
        for key in sorted(transcripts):
            wav = sounds / f"{key}.wav"
            yield Candidate(f"asterisk/{key}", (key, transcripts[key], wav), file_stamp(wav))

    def process(self, cand):
        key, text, wav_path = cand.payload
        if key.startswith("silence/"):
            return self.reject(cand, "silence prompt (no speech)")
        if _BRACKETED.match(text):
            return self.reject(cand, f"non-speech description, not a transcript: {text}")
        if not wav_path.exists():
            return self.reject(cand, f"audio file missing: {wav_path}")
        try:
            audio, ext, duration = self.audio_bytes(wav_path.read_bytes())
        except MediaError as exc:
            return self.reject(cand, str(exc))
        return self.sample(cand, [text], audio=audio, audio_ext=ext, audio_duration_s=duration)
