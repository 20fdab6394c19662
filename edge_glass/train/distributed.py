"""torchrun helpers: gloo on CPU, nccl on GPU; gathering embeddings for the contrastive loss."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None, device: torch.device | None = None) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    ``device``: this rank's device (default: its own GPU when CUDA is available, else the CPU).
    Default backend: nccl on GPU, gloo on CPU; preprocess only needs barriers and asks for gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device is None:
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    return DistInfo(rank, world, device)


def gather_with_local_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All ranks' rows concatenated; only this rank's rows carry gradient (open_clip's gather without grad)."""
    if info.world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[info.rank] = x
    return torch.cat(parts)


def sync_gradients(model: torch.nn.Module, info: DistInfo, full_loss_params: tuple[torch.nn.Parameter, ...] = ()) -> None:
    """Sum gradients over ranks: each rank back-propagates the global loss through its own rows only.

    Parameters that enter the global loss directly on every rank (the temperature, SigLIP's scales and
    biases) get the mean instead.
    A parameter that got no gradient (its modality absent from the batch) gets zeros on every world
    size, so the optimizer steps the same way with 1 or N processes.
    """
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    if info.world == 1:
        return
    direct = {id(p) for p in full_loss_params}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        if id(p) in direct:
            p.grad /= info.world


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
