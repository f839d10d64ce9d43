"""Multi-process training through ``torchrun``: one process per device, gloo on CPU, nccl on GPU.

Without torchrun's environment (RANK, WORLD_SIZE, ...) everything here is a
no-op for a single process, so the same training code runs either way.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """torchrun sets RANK and WORLD_SIZE together with MASTER_ADDR and MASTER_PORT, which joining needs; a
    stray RANK or WORLD_SIZE alone (left in a shell, or set by another tool) is a single process."""
    env = os.environ
    return all(k in env for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")) and int(env.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when available; under torchrun each process takes its local GPU."""
    from diffiqt.errors import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    unknown = ConfigError(f"device {name!r}: give cpu, cuda, cuda:N or auto")
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device name at all
        raise unknown from None
    if device.type not in ("cpu", "cuda"):  # e.g. meta, whose tensors hold no data
        raise unknown
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    return device


def init(device_kind: str, timeout: datetime.timedelta = datetime.timedelta(minutes=30)) -> None:
    """Join the process group if launched by torchrun; ``device_kind`` is 'cpu' or 'cuda'. ``timeout``: how long
    a collective (a barrier) waits for the other processes before it fails."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank())
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timeout)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The average of a scalar across processes (the value itself when alone)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()
