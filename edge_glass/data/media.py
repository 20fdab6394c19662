"""Reading, checking and normalising images and audio; a failed check gives the reason used in rejects.

Every image decode goes through :func:`decode_image`, which reads the size from the header and
refuses images above ``max_pixels`` *before* decoding (Pillow's own decompression-bomb guard is
switched off in favour of this one, so one limit applies everywhere). Large JPEGs are decoded at a
reduced scale with ``Image.draft`` instead of being refused.
"""

from __future__ import annotations

import io
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.signal import resample_poly

from edge_glass.config.download import AudioCheckParams, ImageParams
from edge_glass.core.errors import MediaError

# our header check in decode_image replaces Pillow's global guard (which raises only above 2x its limit
# and warns below it); the limit is download.image.max_pixels
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 100_000_000


def resample(wav: np.ndarray, sr: int, sample_rate: int) -> np.ndarray:
    """Polyphase resampling of a mono float32 signal from ``sr`` to ``sample_rate``."""
    if sr == sample_rate or not wav.size:
        return wav.astype(np.float32, copy=False)
    ratio = Fraction(sample_rate, sr).limit_denominator(1000)
    return resample_poly(wav, ratio.numerator, ratio.denominator).astype(np.float32)


# libsndfile reports this many frames when a stream's length is unknown (not a real length)
_UNKNOWN_FRAMES = 2**62


def check_audio_header(frames: int, sr: int, channels: int, max_duration_s: float | None = None,
                       max_decoded_mb: float | None = None) -> int | None:
    """Refuse a clip from its header alone, before any sample is decoded; return the most frames that
    may be decoded (None: no limit given).

    ``max_duration_s``: frames / rate. ``max_decoded_mb``: the decoded float32 array, frames x channels
    x 4 bytes (MiB), which bounds a worker's memory whatever the rate or channel count. A header that
    does not know its length (a stream) passes here and is held to the returned cap while decoding.
    """
    if sr <= 0 or channels <= 0:
        raise MediaError(f"audio decode failed (unsupported or corrupt): header has rate {sr}, {channels} channels")
    caps = []
    if max_duration_s is not None:
        caps.append(int(max_duration_s * sr))
    if max_decoded_mb is not None:
        caps.append(int(max_decoded_mb * 2**20) // (4 * channels))
    if 0 <= frames < _UNKNOWN_FRAMES:
        if max_duration_s is not None and frames / sr > max_duration_s:
            raise MediaError(f"audio too long ({frames / sr:.2f}s > download.audio.max_duration_s={max_duration_s}s, "
                             "from the file header; not decoded)")
        mb = frames * channels * 4 / 2**20
        if max_decoded_mb is not None and mb > max_decoded_mb:
            raise MediaError(f"audio too large to decode ({mb:.0f} MiB as float32: {frames} frames x {channels} "
                             f"channels > download.audio.max_decoded_mb={max_decoded_mb}; not decoded)")
    return min(caps) if caps else None


def load_audio(src: str | Path | bytes | io.IOBase, sample_rate: int = 16000, *, max_duration_s: float | None = None,
               max_decoded_mb: float | None = None) -> np.ndarray:
    """Decode an audio file (path, bytes or file object) to mono float32 at ``sample_rate``.

    With limits, the header is checked first (:func:`check_audio_header`) and the decode is capped one
    frame past them, so neither a long clip nor a header that understates its length is decoded in full.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        if not len(src):
            raise MediaError("empty file (0 bytes)")
        src = io.BytesIO(src)
    try:
        with sf.SoundFile(src if isinstance(src, io.IOBase) else str(src)) as f:
            cap = check_audio_header(f.frames, f.samplerate, f.channels, max_duration_s, max_decoded_mb)
            data = f.read(-1 if cap is None else cap + 1, dtype="float32", always_2d=True)
            sr = f.samplerate
    except MediaError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip() or type(exc).__name__
        raise MediaError(f"audio decode failed (unsupported or corrupt): {reason}") from None
    if cap is not None and len(data) > cap:
        limits = [f"download.audio.{k}={v}" for k, v in (("max_duration_s", max_duration_s), ("max_decoded_mb", max_decoded_mb))
                  if v is not None]
        raise MediaError(f"audio too long (more frames than its header said, over {' / '.join(limits)}; decode stopped)")
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


def encode_audio(wav: np.ndarray, sample_rate: int, fmt: str = "flac") -> bytes:
    """16-bit PCM in a FLAC (lossless, about half of WAV) or WAV container."""
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def _draft_scale(pixels: int, max_pixels: int) -> int | None:
    """Smallest JPEG DCT scale (1, 2, 4, 8) that brings ``pixels`` under ``max_pixels``; None if none does."""
    for scale in (1, 2, 4, 8):
        if pixels / (scale * scale) <= max_pixels:
            return scale
    return None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode: alpha composited on white, 16/32-bit and float scaled (not clipped) to 8 bit."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16") or (img.mode == "I" and 255 < hi <= 65535 and lo >= 0):
            arr = arr / 257.0  # 16-bit range onto 8 bit
        elif hi > lo and (lo < 0 or hi > 255 or img.mode == "F"):
            arr = (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, "white")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, target: tuple[int, int] | None = None) -> Image.Image:
    """Decode image bytes to RGB without ever decoding more than ``max_pixels``, or raise MediaError.

    The size is read from the header first. JPEGs above the limit decode at 1/2, 1/4 or 1/8 scale
    (``Image.draft``); other formats above it are refused. ``target`` (w, h): a JPEG may decode at a
    reduced scale as long as it stays at least this large (saves time on big photos that are shrunk
    anyway). Animated images give their first frame; EXIF orientation is applied.
    """
    if not data:
        raise MediaError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w < 1 or h < 1:
                raise MediaError("empty image (0 pixels)")
            if img.format == "JPEG":
                scale = _draft_scale(w * h, max_pixels)
                if scale is None:
                    raise MediaError(f"image too large: {w}x{h} = {w * h / 1e6:.0f} Mpx, more than 64x "
                                     f"download.image.max_pixels={max_pixels} even at 1/8 JPEG scale")
                want = (math.ceil(w / scale), math.ceil(h / scale))
                if target is not None:
                    want = (min(want[0], max(target[0], 1)), min(want[1], max(target[1], 1)))
                if want != (w, h):
                    img.draft("RGB", want)
            elif w * h > max_pixels:
                raise MediaError(f"image too large: {w}x{h} = {w * h / 1e6:.0f} Mpx > download.image.max_pixels="
                                 f"{max_pixels} (decompression-bomb guard; only JPEGs can decode at reduced size)")
            if getattr(img, "is_animated", False):
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError("image decode failed: not a recognised image format") from None
    except Exception as exc:  # truncated streams, broken chunks, codec errors: one bad file, not a bad stage
        raise MediaError(f"image decode failed: {type(exc).__name__}: {exc}") from None


def load_image(path_or_bytes: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image fully (not lazily) to RGB, or raise MediaError."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return decode_image(bytes(path_or_bytes), max_pixels)
    try:
        data = Path(path_or_bytes).read_bytes()
    except OSError as exc:
        raise MediaError(f"image read failed: {exc.strerror}") from None
    return decode_image(data, max_pixels)


def check_image(img: Image.Image) -> None:
    """Reject images with a single flat colour (nothing to encode)."""
    lo_hi = img.getextrema()
    if all(lo == hi for lo, hi in lo_hi):
        raise MediaError("blank image (single colour)")


def bounded_size(w: int, h: int, short_side: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """Downscale (never upscale) so the shorter side is at most ``short_side`` and the longer at most
    ``max_aspect`` times it."""
    scale = min(1.0, short_side / min(w, h), max_aspect * short_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def probe_image(data: bytes) -> tuple[str, str, tuple[int, int], int]:
    """(format, mode, size, EXIF orientation) from the header alone, or MediaError."""
    if not data:
        raise MediaError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            orientation = img.getexif().get(0x0112, 1) if img.format == "JPEG" else 1
            return img.format, img.mode, img.size, orientation
    except UnidentifiedImageError:
        raise MediaError("image decode failed: not a recognised image format") from None
    except Exception as exc:
        raise MediaError(f"image decode failed: {type(exc).__name__}: {exc}") from None


def normalise_image(data: bytes, *, short_side: int, max_pixels: int, fmt: str = "auto", jpeg_quality: int = 90) -> tuple[bytes, str]:
    """Decode, check and re-encode an image as RGB at a bounded size; returns (bytes, extension).

    ``fmt`` auto keeps the source's kind of compression: JPEG stays JPEG (and an RGB JPEG already
    within bounds keeps its original bytes, no second lossy pass), everything else becomes PNG.
    """
    src_format, src_mode, src_size, orientation = probe_image(data)
    side = min(bounded_size(*src_size, short_side))  # a reduced JPEG decode must keep at least this
    img = decode_image(data, max_pixels, (side, side))
    check_image(img)
    out_fmt = ("jpeg" if src_format == "JPEG" else "png") if fmt == "auto" else fmt
    size = bounded_size(*img.size, short_side)
    if (out_fmt == "jpeg" and src_format == "JPEG" and src_mode == "RGB" and orientation == 1
            and img.size == src_size == size):
        return data, "jpg"
    if size != img.size:
        img = img.resize(size, Image.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    if out_fmt == "jpeg":
        img.save(buf, "JPEG", quality=jpeg_quality)
        return buf.getvalue(), "jpg"
    img.save(buf, "PNG")
    return buf.getvalue(), "png"


def normalised_image(data: bytes, p: ImageParams) -> tuple[bytes, str]:
    """Normalised image (bounded size, RGB, PNG or JPEG) and its extension under ``download.image``, or
    MediaError: what download stores for every source and what the API feeds the encoder for a new file."""
    return normalise_image(data, short_side=p.short_side, max_pixels=p.max_pixels, fmt=p.format,
                           jpeg_quality=p.jpeg_quality)


def normalised_audio(data: bytes | np.ndarray, p: AudioCheckParams, sample_rate: int | None = None) -> tuple[bytes, str, float]:
    """Normalised audio (mono, ``download.audio.sample_rate``, 16-bit FLAC/WAV), its extension and
    duration, or MediaError. ``data``: encoded file bytes, or a float array at ``sample_rate``
    ((samples,) or (channels, samples)). Download stores these bytes; the API encodes them.

    The duration and decoded size limits are checked on the file's header before it is decoded
    (an hour of audio is refused in microseconds, not decoded in every worker first)."""
    if isinstance(data, np.ndarray):  # decoded already (a hub dataset, an API caller): checked before resampling
        if sample_rate is None:
            raise MediaError("audio given as an array needs its sample_rate")
        check_audio_header(data.shape[-1], int(sample_rate), data.shape[0] if data.ndim == 2 else 1,
                           p.max_duration_s, p.max_decoded_mb)
        wav = resample(data.astype(np.float32).mean(axis=0) if data.ndim == 2 else data.astype(np.float32),
                       int(sample_rate), p.sample_rate)
    else:
        wav = load_audio(data, p.sample_rate, max_duration_s=p.max_duration_s, max_decoded_mb=p.max_decoded_mb)
    duration = check_audio(wav, p.sample_rate, p.min_duration_s, p.max_duration_s, p.silence_dbfs)
    return encode_audio(wav, p.sample_rate, p.format), p.format, duration


def read_media_file(path: Path, root: Path | None, max_bytes: int) -> bytes:
    """Bytes of a media file named by a user (an annotation, a gallery folder, an API call), or MediaError.

    With ``root``, ``path`` must resolve (symlinks followed) to a file under it: ``../`` and links out of
    the root are refused; absolute paths are fine when they lie under the root. Files larger than
    ``max_bytes`` (``download.max_file_mb``) are refused before they are read.
    """
    path = Path(path)
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise MediaError(f"cannot resolve path {path}: {exc}") from None
    if root is not None and not real.is_relative_to(root):
        raise MediaError(f"path escapes media_root: {path} resolves to {real}, outside {root}")
    try:
        size = real.stat().st_size
        if not real.is_file():
            raise MediaError(f"not a file: {path}")
        if size == 0:
            raise MediaError(f"empty file (0 bytes): {path}")
        if size > max_bytes:
            raise MediaError(f"file too large: {size / 2**20:.0f} MiB > download.max_file_mb={max_bytes // 2**20}: {path}")
        return real.read_bytes()
    except FileNotFoundError:
        raise MediaError(f"missing file: {path}") from None
    except PermissionError:
        raise MediaError(f"unreadable file (permission denied): {path}") from None
