"""One device rule for every stage: ``device: auto|cpu|cuda|cuda:N`` and ``precision: auto|fp32|bf16|fp16``.

``auto`` is the process's own GPU when CUDA is available (``cuda:LOCAL_RANK`` under torchrun), else
the CPU; ``precision: auto`` is bf16 autocast on CUDA and fp32 on the CPU. Asking for CUDA where there
is none is a params error naming the key, not a crash deep inside a stage.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from edge_glass.config import ParamsError

DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"


def resolve_device(spec: str, key: str = "device") -> torch.device:
    if not re.match(DEVICE_PATTERN, spec):
        raise ParamsError(f"{key}: expected auto, cpu, cuda or cuda:N (got {spec!r})")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ParamsError(f"{key}={spec}: CUDA is not available on this machine (use auto or cpu)")
    index = int(spec.split(":")[1]) if ":" in spec else local
    if index >= torch.cuda.device_count():
        raise ParamsError(f"{key}={spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(f"cuda:{index}")


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 or fp16 when asked (auto: bf16 on CUDA), else fp32 (no autocast)."""
    if spec == "fp16":
        return torch.float16
    if spec == "bf16" or (spec == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device`` (bf16/fp16); a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_fast_matmul(device: torch.device) -> None:
    """TF32 tensor cores for the fp32 matmuls that autocast leaves (CUDA only; CPU results unchanged)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def stage_device(spec: str, key: str) -> torch.device:
    """``resolve_device`` plus TF32 matmuls on CUDA: what every stage calls once at its start."""
    device = resolve_device(spec, key)
    enable_fast_matmul(device)
    return device
