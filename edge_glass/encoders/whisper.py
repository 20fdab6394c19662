"""Whisper audio encoder in plain PyTorch, loaded from CTranslate2 ``model.bin`` or transformers weights.

The encoder runs on log-mel frames of the clip's own length (``trim_to_length``) instead of
30 s of padding: attention cost then follows the clip, and padded positions are masked.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
CHUNK_FRAMES = 3000  # 30 s of mel frames; 1500 encoder positions

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(path: str | Path) -> dict[str, np.ndarray]:
    """Read every variable of a CTranslate2 ``model.bin`` (format versions 5-6) into numpy arrays."""
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<H")
        text = buf[pos : pos + n - 1].decode()
        pos += n
        return text

    version = take("<I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 model format {version} not supported (need >= 5)")
    string()  # spec name
    take("<I")  # spec revision
    variables = {}
    for _ in range(take("<I")):
        name = string()
        dims = [take("<I") for _ in range(take("<B"))]
        dtype = _CT2_DTYPES.get(take("<B"))
        nbytes = take("<I")
        if dtype is None:
            raise ValueError(f"{path}: variable {name} has an unsupported dtype")
        variables[name] = np.frombuffer(buf, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=pos).reshape(dims)
        pos += nbytes
    if pos < len(buf):
        for _ in range(take("<I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    return variables


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # fused; the key bias is zero as in Whisper
        self.out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.attn_norm(x)), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        x = x + self.out(rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), "b h n d -> b n (h d)"))
        return x + self.mlp(self.mlp_norm(x))


class WhisperEncoder(nn.Module):
    """conv stem (stride 2) + sinusoidal positions + pre-norm transformer blocks + final norm."""

    def __init__(self, n_mels: int, dim: int, heads: int, layers: int, n_positions: int = 1500):
        super().__init__()
        self.n_mels, self.dim, self.heads = n_mels, dim, heads
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(n_positions, dim))
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, mel: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mel: (b, n_mels, frames), frames even and <= 3000. Returns tokens (b, frames/2, dim) and their mask."""
        x = F.gelu(self.conv1(mel))
        if frame_lengths is not None:  # zero conv1 outputs past each clip, as unbatched conv padding would see
            x = x * (torch.arange(x.shape[-1], device=x.device)[None, :] < frame_lengths[:, None]).unsqueeze(1)
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        n = x.shape[1]
        if n > self.positions.shape[0]:
            raise ValueError(f"audio of {mel.shape[-1]} mel frames exceeds Whisper's 30 s window")
        x = x + self.positions[:n]
        lengths = torch.full((x.shape[0],), n, device=x.device) if frame_lengths is None else (frame_lengths + 1) // 2
        mask = torch.arange(n, device=x.device)[None, :] < lengths[:, None]
        key_mask = None if bool(mask.all()) else mask
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x), mask


def encoder_from_ctranslate2(model_dir: str | Path) -> WhisperEncoder:
    """Build the encoder from a CTranslate2 Whisper folder (``model.bin`` + ``config.json``)."""
    model_dir = Path(model_dir)
    v = read_ctranslate2(model_dir / "model.bin")
    dim = v["encoder/conv1/weight"].shape[0]
    n_mels = v["encoder/conv1/weight"].shape[1]
    layers = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    heads = int(v["encoder/num_heads"]) if "encoder/num_heads" in v else dim // 64
    enc = WhisperEncoder(n_mels, dim, heads, layers, v["encoder/position_encodings/encodings"].shape[0])
    sd = {
        "conv1.weight": "encoder/conv1/weight", "conv1.bias": "encoder/conv1/bias",
        "conv2.weight": "encoder/conv2/weight", "conv2.bias": "encoder/conv2/bias",
        "positions": "encoder/position_encodings/encodings",
        "norm.weight": "encoder/layer_norm/gamma", "norm.bias": "encoder/layer_norm/beta",
    }
    for i in range(layers):
        p = f"encoder/layer_{i}"
        sd.update({
            f"blocks.{i}.attn_norm.weight": f"{p}/self_attention/layer_norm/gamma",
            f"blocks.{i}.attn_norm.bias": f"{p}/self_attention/layer_norm/beta",
            f"blocks.{i}.qkv.weight": f"{p}/self_attention/linear_0/weight",
            f"blocks.{i}.qkv.bias": f"{p}/self_attention/linear_0/bias",
            f"blocks.{i}.out.weight": f"{p}/self_attention/linear_1/weight",
            f"blocks.{i}.out.bias": f"{p}/self_attention/linear_1/bias",
            f"blocks.{i}.mlp_norm.weight": f"{p}/ffn/layer_norm/gamma",
            f"blocks.{i}.mlp_norm.bias": f"{p}/ffn/layer_norm/beta",
            f"blocks.{i}.mlp.0.weight": f"{p}/ffn/linear_0/weight",
            f"blocks.{i}.mlp.0.bias": f"{p}/ffn/linear_0/bias",
            f"blocks.{i}.mlp.2.weight": f"{p}/ffn/linear_1/weight",
            f"blocks.{i}.mlp.2.bias": f"{p}/ffn/linear_1/bias",
        })
    enc.load_state_dict({k: torch.from_numpy(v[name].astype(np.float32)) for k, name in sd.items()}, strict=True)
    return enc.eval()


def encoder_from_transformers(hf_encoder: nn.Module) -> WhisperEncoder:
    """Copy a transformers ``WhisperEncoder``'s weights (separate q/k/v, k without bias) into ours."""
    cfg = hf_encoder.config
    enc = WhisperEncoder(cfg.num_mel_bins, cfg.d_model, cfg.encoder_attention_heads, cfg.encoder_layers, cfg.max_source_positions)
    src = hf_encoder.state_dict()
    sd = {
        "conv1.weight": src["conv1.weight"], "conv1.bias": src["conv1.bias"],
        "conv2.weight": src["conv2.weight"], "conv2.bias": src["conv2.bias"],
        "positions": src["embed_positions.weight"],
        "norm.weight": src["layer_norm.weight"], "norm.bias": src["layer_norm.bias"],
    }
    for i in range(cfg.encoder_layers):
        p = f"layers.{i}"
        a = f"{p}.self_attn"
        sd.update({
            f"blocks.{i}.attn_norm.weight": src[f"{p}.self_attn_layer_norm.weight"],
            f"blocks.{i}.attn_norm.bias": src[f"{p}.self_attn_layer_norm.bias"],
            f"blocks.{i}.qkv.weight": torch.cat([src[f"{a}.q_proj.weight"], src[f"{a}.k_proj.weight"], src[f"{a}.v_proj.weight"]]),
            f"blocks.{i}.qkv.bias": torch.cat([src[f"{a}.q_proj.bias"], torch.zeros_like(src[f"{a}.q_proj.bias"]), src[f"{a}.v_proj.bias"]]),
            f"blocks.{i}.out.weight": src[f"{a}.out_proj.weight"],
            f"blocks.{i}.out.bias": src[f"{a}.out_proj.bias"],
            f"blocks.{i}.mlp_norm.weight": src[f"{p}.final_layer_norm.weight"],
            f"blocks.{i}.mlp_norm.bias": src[f"{p}.final_layer_norm.bias"],
            f"blocks.{i}.mlp.0.weight": src[f"{p}.fc1.weight"],
            f"blocks.{i}.mlp.0.bias": src[f"{p}.fc1.bias"],
            f"blocks.{i}.mlp.2.weight": src[f"{p}.fc2.weight"],
            f"blocks.{i}.mlp.2.bias": src[f"{p}.fc2.bias"],
        })
    enc.load_state_dict({k: t.float() for k, t in sd.items()}, strict=True)
    return enc.eval()


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, 3.0 * f / 200.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters, 0-8 kHz (as librosa and Whisper): (n_mels, 201)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    lower = (fft_freqs[None, :] - mel_points[:-2, None]) / np.diff(mel_points)[:-1, None]
    upper = (mel_points[2:, None] - fft_freqs[None, :]) / np.diff(mel_points)[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    fb[np.abs(fb) < 1e-10] = 0.0  # float32 denormals would make the mel matmul ~50x slower
    return np.ascontiguousarray(fb, dtype=np.float32)


def log_mel(wav: np.ndarray | torch.Tensor, n_mels: int = 80, pad_to_30s: bool = False) -> torch.Tensor:
    """Whisper's log-mel spectrogram of a 16 kHz clip: (n_mels, frames), frames = samples // 160 (made even).

    numpy, not torch: on small clips torch's intra-op thread pool costs more than the FFT, and this
    runs in the loader thread beside the encoder.
    """
    audio = np.asarray(wav, dtype=np.float32)
    if pad_to_30s:
        audio = np.pad(audio, (0, max(0, CHUNK_FRAMES * HOP - audio.size)))[: CHUNK_FRAMES * HOP]
    padded = np.pad(audio, N_FFT // 2, mode="reflect")  # torch.stft(center=True)
    n_frames = 1 + (padded.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, (n_frames, N_FFT), (padded.strides[0] * HOP, padded.strides[0]))
    spec = np.fft.rfft(frames * _hann(), axis=-1)[:-1]  # Whisper drops the last frame
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    log_spec = np.log10(np.maximum(mel_filters(n_mels) @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
    if log_spec.shape[-1] % 2:
        log_spec = np.pad(log_spec, ((0, 0), (0, 1)))
    return torch.from_numpy(np.ascontiguousarray(log_spec[:, :CHUNK_FRAMES]))


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic, as torch


def batch_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad mels with zeros (as the conv padding does) to one batch; return it and frame lengths."""
    lengths = torch.tensor([m.shape[-1] for m in mels])
    out = torch.zeros(len(mels), mels[0].shape[0], int(lengths.max()))
    for i, m in enumerate(mels):
        out[i, :, : m.shape[-1]] = m
    return out, lengths
