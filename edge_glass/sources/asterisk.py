"""Asterisk core English prompts (Debian, CC-BY-SA-3.0): real speech clips with exact transcripts."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Iterator

from edge_glass.config import AsteriskParams, AudioCheckParams
from edge_glass.manifest import Reject, Sample
from edge_glass.media import MediaError, check_audio, load_audio, write_wav

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


def iter_asterisk(
    params: AsteriskParams, audio: AudioCheckParams, media_dir: Path, base_dir: Path, limit: int | None
) -> Iterator[Sample | Reject]:
    """Yield one Sample (audio re-written as 16-bit mono WAV at the target rate) or Reject per prompt."""
    sounds = Path(params.sounds_dir)
    if not sounds.is_dir():
        raise FileNotFoundError(
            f"asterisk sounds not found: {sounds} (apt-get install asterisk-core-sounds-en-wav, "
            "or set download.asterisk.sounds_dir)"
        )
    transcripts = read_transcripts(params.transcripts)
    out_dir = media_dir / "asterisk"
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for key in sorted(transcripts):
        if limit is not None and count >= limit:
            return
        text = transcripts[key]
        item_id = f"asterisk/{key}"
        if key.startswith("silence/"):
            yield Reject(item_id, "asterisk", "silence prompt (no speech)")
            continue
        if _BRACKETED.match(text):
            yield Reject(item_id, "asterisk", f"non-speech description, not a transcript: {text}")
            continue
        wav_path = sounds / f"{key}.wav"
        if not wav_path.exists():
            yield Reject(item_id, "asterisk", f"audio file missing: {wav_path}")
            continue
        try:
            wav = load_audio(wav_path, audio.sample_rate)
            duration = check_audio(wav, audio.sample_rate, audio.min_duration_s, audio.max_duration_s, audio.silence_dbfs)
        except MediaError as exc:
            yield Reject(item_id, "asterisk", str(exc))
            continue
        out = out_dir / f"{key.replace('/', '__')}.wav"
        write_wav(out, wav, audio.sample_rate)
        count += 1
        yield Sample(
            item_id=item_id,
            source="asterisk",
            captions=[text],
            audio_path=str(out.relative_to(base_dir)),
            audio_duration_s=duration,
            license=LICENSE,
            attribution=ATTRIBUTION,
        )
