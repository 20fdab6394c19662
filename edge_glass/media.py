"""Reading and checking images and audio; a failed check gives the reason used in rejects."""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError
from scipy.signal import resample_poly


class MediaError(ValueError):
    """An input file that cannot be used; the message is the reject reason."""


def resample(wav: np.ndarray, sr: int, sample_rate: int) -> np.ndarray:
    """Polyphase resampling of a mono float32 signal from ``sr`` to ``sample_rate``."""
    if sr == sample_rate or not wav.size:
        return wav.astype(np.float32, copy=False)
    ratio = Fraction(sample_rate, sr).limit_denominator(1000)
    return resample_poly(wav, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(src: str | Path | io.BytesIO, sample_rate: int = 16000) -> np.ndarray:
    """Decode an audio file (path or file object) to mono float32 at ``sample_rate``."""
    try:
        data, sr = sf.read(src if isinstance(src, io.IOBase) else str(src), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise MediaError(f"audio decode failed: {exc}") from None
    return resample(data.mean(axis=1), sr, sample_rate)


def loudness_dbfs(wav: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def check_audio(wav: np.ndarray, sample_rate: int, min_s: float, max_s: float, silence_dbfs: float) -> float:
    """Return the duration in seconds, or raise MediaError naming why the clip is unusable."""
    duration = wav.size / sample_rate
    if wav.size == 0:
        raise MediaError("empty audio (0 samples)")
    if not np.isfinite(wav).all():
        raise MediaError("audio contains NaN or Inf samples")
    if duration < min_s:
        raise MediaError(f"audio too short ({duration:.3f}s < {min_s}s)")
    if duration > max_s:
        raise MediaError(f"audio too long ({duration:.2f}s > {max_s}s)")
    level = loudness_dbfs(wav)
    if level < silence_dbfs:
        raise MediaError(f"silent audio ({level:.1f} dBFS < {silence_dbfs} dBFS)")
    return duration


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    sf.write(str(path), wav, sample_rate, subtype="PCM_16")


def load_image(path_or_bytes: str | Path | bytes) -> Image.Image:
    """Decode an image fully (not lazily) to RGB, or raise MediaError."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    try:
        with Image.open(src) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                raise MediaError("empty image (0 pixels)")
            if img.mode in ("RGBA", "LA", "P"):
                rgba = img.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, "white")
                canvas.paste(rgba, mask=rgba.getchannel("A"))
                return canvas
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MediaError(f"image decode failed: {exc}") from None


def check_image(img: Image.Image) -> None:
    """Reject images with a single flat colour (nothing to encode)."""
    lo_hi = img.getextrema()
    if all(lo == hi for lo, hi in lo_hi):
        raise MediaError("blank image (single colour)")
