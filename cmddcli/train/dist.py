"""Distributed data parallel plumbing for ``torchrun``: process-group set-up, device choice, reductions.

``torchrun --nproc_per_node N -m cmddcli.cli.main train ...`` (or ``cmdd train`` under torchrun) sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; we initialise NCCL on CUDA and gloo on CPU.
Without those variables everything runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import CmddError

log = logging.getLogger(__name__)

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "resolve_device", "all_reduce_sum", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group (and so destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA GPU if there is one, else CPU; ``cuda`` / ``cuda:N`` / ``cpu`` as given."""
    if pref == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError as e:
        raise CmddError(f"unknown device {pref!r} (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CmddError("device 'cuda' requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (or an existing one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local, resolve_device(device_pref, local), owns_group=False)
    if world <= 1:
        return DistInfo(device=resolve_device(device_pref, 0))
    if not dist.is_available():
        raise CmddError("WORLD_SIZE > 1 but torch.distributed is not available in this PyTorch build")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_pref, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("distributed: rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistInfo(rank, world, local, device, owns_group=True)


def shutdown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (in place); a no-op in a single process."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if `flag` is True on any rank."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
