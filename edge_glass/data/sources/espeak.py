"""Spoken captions with espeak-ng, turning image-caption pairs into image+audio+text triples (openmoji)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

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
