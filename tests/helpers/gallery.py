"""A small gallery folder with the bad files a person's collection has, and a stand-in model for the
index format's own tests (the real model's tests are tests/test_index.py)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from edge_glass.data.media import check_audio, check_image, decode_image, load_audio


def png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def wav(freq: float, seconds: float = 1.0, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * freq * t), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def gallery_folder(tmp: Path, images: int = 4) -> tuple[Path, dict[str, str]]:
    """``tmp/gallery``: good images and a clip, plus each kind of bad entry; returns (root, {path: expected reason})."""
    root, outside = tmp / "gallery", tmp / "outside"
    (root / "photos" / "2024").mkdir(parents=True)
    (root / "sounds").mkdir()
    outside.mkdir()
    for i in range(images):
        (root / "photos" / ("2024" if i % 2 else "") / f"img{i}.PNG").write_bytes(png(i))
    (root / "sounds" / "tone.wav").write_bytes(wav(440))
    whole = png(99, 64)
    (root / "photos" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "photos" / "notes.png").write_text("this is a text file with an image's name\n")
    (root / "readme.txt").write_text("not media: ignored\n")
    (outside / "secret.png").write_bytes(png(123))
    (root / "photos" / "escape.png").symlink_to(outside / "secret.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    bad = {"photos/truncated.png": "image decode failed", "photos/notes.png": "not a recognised image format",
           "photos/escape.png": "outside the gallery root", "linked": "outside the gallery root"}
    return root, bad


class FakeModel:
    """What the index needs of a model (``edge_glass.load``'s interface), with the project's real media
    checks and a deterministic embedding of the decoded content (not a trained one)."""

    modalities = ("image", "audio", "text")

    def __init__(self, fingerprint: str = "fake-model-1", dims=(16, 8)):
        self.fingerprint, self.dims = fingerprint, list(dims)
        self.embedded = []  # every input embedded, in order: what the resume tests count

    def load_media(self, modality, data):
        if modality == "image":
            img = decode_image(data)
            check_image(img)
            return np.asarray(img.resize((8, 8)), dtype=np.float32).ravel()
        wav_ = load_audio(data, 16000)
        check_audio(wav_, 16000, 0.3, 30.0, -50.0)
        return wav_[:64]

    def _vec(self, x, dim):
        seed = int.from_bytes(hashlib.sha256(np.asarray(x).tobytes()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(max(self.dims)).astype(np.float32)[: dim or max(self.dims)]
        return v / np.linalg.norm(v)

    def embed_loaded(self, modality, inputs, dim=None):
        self.embedded += [(modality, x) for x in inputs]
        return np.stack([self._vec(x, dim) for x in inputs])

    def embed_texts(self, texts, dim=None):
        return np.stack([self._vec(np.frombuffer(t.encode(), np.uint8), dim) for t in texts])

    def embed_images(self, paths, dim=None):
        return self.embed_loaded("image", [self.load_media("image", Path(p).read_bytes()) for p in paths], dim)
