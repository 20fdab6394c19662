"""What every stage's schema shares: strict models (an unknown key is an error), the device rule, precision, the optimiser."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

# One device rule for every stage (edge_glass.core.device): auto = this process's GPU when CUDA is present
DeviceSpec = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$")]


# autocast dtype; auto = bf16 on CUDA, fp32 (no autocast) on the CPU
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerParams(Strict):
    """AdamW with linear warmup + cosine decay, clipping and checkpoints (decode.train; base of align.train)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    clip_grad: Optional[float] = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    num_threads: Optional[int] = Field(None, ge=1)
    # training randomness (initialisation, batches, dropout); null: the top-level seed, which also
    # decides the data splits. A seed sweep varies this one and keeps the test set.
    seed: Optional[int] = None


def _no_fp16_training(v: str) -> str:
    """fp16 gradients underflow without loss scaling, and edge_glass has no GradScaler: refused, not run silently.

    Refusing instead of adding a GradScaler: bf16 (same speed on every GPU from Ampere on, no underflow)
    and fp32 cover training, and a scaler would add state to every checkpoint and skipped steps to the
    exact-resume and multi-rank guarantees, for GPUs (pre-Ampere) that the project does not target."""
    if v == "fp16":
        raise ValueError("fp16 needs loss scaling, which edge_glass does not do; use bf16 or fp32")
    return v
