"""Devices and torch.distributed for Phase-2: one process, or data-parallel under ``torchrun``."""
from __future__ import annotations

import os

import torch

__all__ = ["resolve_device", "rank_world", "init_distributed", "barrier"]


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" → cuda if available else cpu; under torchrun with CUDA, the GPU of ``LOCAL_RANK``."""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:K' or 'auto', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def rank_world():
    """(rank, world size) of the torch.distributed group, (0, 1) when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU.

    Returns True when a group was initialised here.  A plain ``python`` run is left alone.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def barrier():
    """torch.distributed's barrier when a process group is up, else nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()

