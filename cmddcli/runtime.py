"""Where and how this process runs: the device, the torchrun / DDP group, CPU threads and allocator.

One home for the process-level choices every command makes:

* :func:`resolve_device` -- ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` to a checked
  ``torch.device``. ``"auto"`` and ``"cuda"`` without an index mean the CUDA device of this rank
  (``local_rank``) when one is given, else the current CUDA device; CPU when CUDA is absent (``auto``).
* :class:`DistInfo` -- this process's place in a ``torchrun`` launch (RANK / WORLD_SIZE /
  LOCAL_RANK / LOCAL_WORLD_SIZE, checked) and its device; a single process is rank 0 of 1.
* :func:`init_distributed` / :func:`join_group` / :func:`shutdown_distributed` -- the process
  group (NCCL on CUDA, gloo on CPU or when only Python objects are gathered), and the collectives
  the training loop and the file runner need (:func:`all_reduce_sum`, :func:`barrier`,
  :func:`max_over_ranks`, :func:`gather_objects`), each a no-op in a single process.
* :func:`available_cores` and :func:`tune_cpu_allocator` (below).

:func:`tune_cpu_allocator` -- why it exists: glibc's ``malloc`` serves every block above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` on ``free``. A
CMDDNet forward allocates dozens of such activations, so each one is paid for again in page faults
when it is first written (one fault per 4 KiB page, zero-filled by the kernel). Measured on the
2-core development machine (benchmarks/RESULTS.md): copying a 32 MiB tensor into a fresh tensor
takes ~10 ms, into a reused one 1.5 ms; the whole `small` forward at 512² runs 1.4-1.5x faster with
the tuning. ``mallopt(M_MMAP_MAX, 0)`` keeps large blocks on the heap and a high
``M_TRIM_THRESHOLD`` keeps freed heap memory in the process, so the next forward reuses pages that
are already mapped. Peak resident memory is unchanged (it is the high-water mark either way).
Set ``CMDD_MALLOC_TUNING=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import logging
import os
import platform
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

import torch

from .errors import CmddError

log = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_state = {"tuned": None}


def tune_cpu_allocator() -> bool:
    """Keep large CPU allocations on glibc's heap and never trim it (see the module docstring).

    Idempotent and process-wide. Returns True when the tuning is in effect; False on other C
    libraries (musl, macOS, Windows) or when ``CMDD_MALLOC_TUNING=0``. Never raises."""
    if _state["tuned"] is not None:
        return _state["tuned"]
    ok = False
    if os.environ.get("CMDD_MALLOC_TUNING", "1") != "0" and platform.system() == "Linux":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            mallopt(_M_TOP_PAD, 64 << 20)  # grow the heap in 64 MiB steps
        except (OSError, AttributeError) as e:  # not glibc
            log.debug("malloc tuning unavailable: %s", e)
            ok = False
    _state["tuned"] = ok
    log.debug("glibc malloc tuning %s", "on" if ok else "off")
    return ok


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask on Linux, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------- devices


def check_device_name(device: Optional[str]) -> str:
    """``device`` normalised (``auto``, ``cpu``, ``cuda``, ``cuda:N``) if it names a device cmdd can use,
    whether or not this machine has it (a dry run may plan a GPU run on a laptop). Raises CmddError."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CmddError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from e
    if dev.type not in ("cpu", "cuda"):
        raise CmddError(f"unsupported device {device!s} (use auto, cpu, cuda or cuda:N)")
    return name


def resolve_device(device: "str | torch.device | None" = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` (or a ``torch.device``) -> a checked ``torch.device``.

    ``auto`` is CUDA when it is available, else CPU. A CUDA device without an index is
    ``cuda:local_rank`` when ``local_rank`` is given (one GPU per torchrun rank), else the current
    CUDA device. Raises :class:`CmddError` for an unknown name, CUDA requested without CUDA, or an
    index beyond the devices present."""
    if isinstance(device, torch.device):
        dev = device
    else:
        name = check_device_name(device)
        if name == "auto":
            if not torch.cuda.is_available():
                return torch.device("cpu")
            name = "cuda"
        dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CmddError(f"device {device!s} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None:
            index = dev.index
        elif local_rank is not None:
            index = local_rank
        else:
            index = torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise CmddError(f"device cuda:{index} does not exist ({torch.cuda.device_count()} CUDA devices)")
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise CmddError(f"unsupported device {device!s} (use auto, cpu, cuda or cuda:N)")
    return dev


# ---------------------------------------------------------------------------------------- torchrun

GATHER_TIMEOUT_HOURS = 24  # a gloo group that only gathers summaries waits this long for slow ranks


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun launch. The defaults are a single process on the CPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the process group (and so destroys it)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "DistInfo":
        """RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE from ``env`` (``os.environ`` by default).
        Raises :class:`CmddError` for values that are not integers or a rank outside the world."""
        env = os.environ if env is None else env

        def get(name: str, default: int) -> int:
            try:
                return int(env.get(name, default))
            except ValueError as e:
                raise CmddError(f"bad {name}={env.get(name)!r} in the environment") from e

        world = get("WORLD_SIZE", 1)
        info = cls(get("RANK", 0), world, get("LOCAL_RANK", 0), get("LOCAL_WORLD_SIZE", world))
        if not (world >= 1 and 0 <= info.rank < world):
            raise CmddError(f"bad RANK={info.rank} / WORLD_SIZE={world} in the environment")
        return info

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def device_for_rank(device: str, info: DistInfo) -> torch.device:
    """The device one rank uses: under torchrun ``auto`` / ``cuda`` take ``cuda:LOCAL_RANK`` (modulo
    the GPUs present); an explicit ``cuda:N`` or ``cpu`` is used as given."""
    local = None
    if info.distributed and torch.cuda.is_available():
        local = info.local_rank % torch.cuda.device_count()
    return resolve_device(device, local)


def join_group(info: DistInfo, backend: Optional[str] = None,
               timeout: Optional[datetime.timedelta] = None) -> DistInfo:
    """Join the process group described by ``info`` (a no-op for a single process or when a group
    exists). ``backend`` defaults to NCCL for a CUDA device and gloo otherwise. Returns ``info``
    with ``owns_group`` set when this call created the group. Raises :class:`CmddError` when
    torch.distributed is missing or the rendezvous fails."""
    if not info.distributed:
        return info
    import torch.distributed as dist

    if not dist.is_available():
        raise CmddError("WORLD_SIZE > 1 but torch.distributed is not available in this PyTorch build")
    if dist.is_initialized():
        return info
    backend = backend or ("nccl" if info.device.type == "cuda" else "gloo")
    if info.device.type == "cuda" and backend == "nccl":
        torch.cuda.set_device(info.device)
    kwargs: dict = {"timeout": timeout} if timeout is not None else {}
    try:
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, **kwargs)
    except (ValueError, RuntimeError) as e:
        raise CmddError(f"cannot join the torchrun process group ({e}); launch with torchrun") from e
    log.info("distributed: rank %d/%d on %s (%s)", info.rank, info.world_size, info.device, backend)
    return replace(info, owns_group=True)


def init_distributed(device: str = "auto") -> DistInfo:
    """This process's :class:`DistInfo` from torchrun's environment, on its device, in the process
    group (created here when needed: NCCL on CUDA, gloo on CPU). Without torchrun: rank 0 of 1."""
    try:
        import torch.distributed as dist

        existing = dist.is_available() and dist.is_initialized()
    except ImportError:
        existing = False
    if existing:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local, int(os.environ.get("LOCAL_WORLD_SIZE", world)),
                        device=resolve_device(device, local))
    info = DistInfo.from_env()
    local = info.local_rank if info.distributed else None
    return join_group(replace(info, device=resolve_device(device, local)))


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group if this process created it (see :func:`join_group`)."""
    if not info.owns_group:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (in place); a no-op in a single process."""
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    """Wait for every rank; a no-op in a single process."""
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def max_over_ranks(value: float, info: DistInfo) -> float:
    """The largest of every rank's ``value``, on every rank (``value`` in a single process)."""
    if not info.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], device=info.device)  # float32: exact for integers below 2**24
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def gather_objects(obj: Any, info: DistInfo) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` in a single process).
    Raises :class:`CmddError` when distributed without a process group."""
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    if not dist.is_initialized():
        raise CmddError("distributed run without a process group (call join_group first)")
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
