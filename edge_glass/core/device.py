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

from edge_glass.core.errors import ParamsError

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


def configure_kernels(device: torch.device) -> None:
    """Kernel choices every stage makes once at its start: TF32 matmuls and deterministic algorithms.

    TF32 tensor cores serve the fp32 matmuls that autocast leaves (CUDA only; CPU results unchanged).
    ``torch.use_deterministic_algorithms`` picks the deterministic kernel wherever torch has one (cuDNN
    convolutions, cuBLAS with a fixed workspace, sort-based scatter/index_add), so two runs on one GPU with
    identical inputs give identical results. ``warn_only``: an op torch has no deterministic CUDA kernel
    for warns (naming the op) instead of stopping the stage; such an op is the one place where runs on one
    GPU may still differ. The CPU is left alone: the kernels these stages use there are deterministic
    already (two CPU runs are bit-identical), and the flag would only add NaN-filling of every
    ``torch.empty``. cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when its handle is created, i.e. at the
    first matmul, which comes after this call; a value the user set is kept.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False  # autotuning may pick a different algorithm in each run
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # a debugging aid, not a result change


def stage_device(spec: str, key: str) -> torch.device:
    """``resolve_device`` plus ``configure_kernels``: what every stage calls once at its start."""
    device = resolve_device(spec, key)
    configure_kernels(device)
    return device


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` in this thread for the block, then restored."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
