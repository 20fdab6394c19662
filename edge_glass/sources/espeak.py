"""Spoken captions with espeak-ng, turning image-caption pairs into image+audio+text triples."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from edge_glass.config import AudioCheckParams, EspeakParams
from edge_glass.manifest import Ledger, Sample
from edge_glass.media import MediaError, check_audio, load_audio, write_wav

ESPEAK_LICENSE = "espeak-ng synthesis (GPL-3.0 program; generated audio carries the caption's licence)"


def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng not found on PATH (apt-get install espeak-ng, or set download.openmoji.speak_captions=false)")
    return exe


def pick_voice(item_id: str, voices: list[str]) -> str:
    """A voice per item, fixed by the item id, so that speakers vary across the data set."""
    h = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big")
    return voices[h % len(voices)]


def speak(text: str, voice: str, wpm: int, exe: str) -> "tuple[bytes, str]":
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        proc = subprocess.run([exe, "-v", voice, "-s", str(wpm), "-w", tmp.name, "--", text], capture_output=True, text=True)
        if proc.returncode != 0:
            return b"", f"espeak-ng failed ({proc.returncode}): {proc.stderr.strip()[:200]}"
        return Path(tmp.name).read_bytes(), ""


def add_spoken_captions(ledger: Ledger, source: str, params: EspeakParams, audio: AudioCheckParams, media_dir: Path, base_dir: Path) -> None:
    """Speak the first caption of every ``source`` sample; samples whose speech fails are rejected."""
    exe = espeak_binary()
    out_dir = media_dir / "espeak"
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [s for s in ledger.samples if s.source == source]

    def job(sample: Sample):
        return speak(sample.captions[0], pick_voice(sample.item_id, params.voices), params.words_per_minute, exe)

    failed: set[str] = set()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for sample, (raw, err) in tqdm(zip(todo, pool.map(job, todo)), total=len(todo), desc=f"espeak {source}", unit="clip"):
            if err:
                ledger.reject(sample.item_id, source, err)
                failed.add(sample.item_id)
                continue
            out = out_dir / (sample.item_id.replace("/", "__") + ".wav")
            out.write_bytes(raw)
            try:
                wav = load_audio(out, audio.sample_rate)
                duration = check_audio(wav, audio.sample_rate, audio.min_duration_s, audio.max_duration_s, audio.silence_dbfs)
            except MediaError as exc:
                out.unlink()
                ledger.reject(sample.item_id, source, f"spoken caption: {exc}")
                failed.add(sample.item_id)
                continue
            write_wav(out, wav, audio.sample_rate)
            sample.audio_path = str(out.relative_to(base_dir))
            sample.audio_duration_s = duration
    ledger.samples = [s for s in ledger.samples if s.item_id not in failed]
