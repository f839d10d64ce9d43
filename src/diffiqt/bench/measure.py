"""Timing primitives: wall/CPU times, the machine's convolution peak, network passes and their FLOPs.

Every number is taken in the process that prints it, on the device and in the precision given; CUDA
work is synchronised before a clock is read. On a shared machine other jobs slow every number down,
so the report carries the load average before and after.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffiqt.nets import Network, build_network

BATCH_PATCHES = 27  # one training mini-batch: the 3×3×3 patches of a 96³ block
PEAK_SHAPE = (2, 64, 32, 32, 32)  # the peak probe: a 64 -> 64 3³ convolution on this input


@dataclass
class Timing:
    """Wall and process-CPU seconds of repeated calls (after any warm-up)."""

    walls: list[float]
    cpus: list[float]

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True) -> Timing:
    """Time ``repeats`` calls of ``step``, after one untimed warm-up call if ``warmup``."""
    if warmup:
        step()
        synchronise(device)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        synchronise(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(walls, cpus)


def precision(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked, else nothing (float32). bf16 on CPU is refused: ~1000x slower here."""
    if not bf16:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ValueError("bf16 is only allowed on CUDA (on this CPU it is about 1000x slower than float32)")
    return torch.autocast("cuda", dtype=torch.bfloat16)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what the platform says."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine_line(device: torch.device, bf16: bool) -> str:
    """One line naming the date, hardware, software, precision and load."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (
        f"{datetime.datetime.now().isoformat(timespec='minutes')} · {where} · {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()} · torch {torch.__version__} · "
        f"{'bf16 autocast' if bf16 else 'float32'} · load average {load_average()}"
    )


def conv_peak(
    repeats: int, device: torch.device, bf16: bool, memory_format: torch.memory_format = torch.channels_last_3d
) -> float:
    """FLOP/s of a 64 -> 64 3³ convolution forward on [2, 64, 32, 32, 32], best of ``repeats``.

    The networks' work is mostly such convolutions, so this is the machine's attainable peak for them.
    """
    # Module.to takes memory_format at run time; torch's overloads of it leave the keyword out.
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device, memory_format=memory_format)  # type: ignore[call-overload]
    x = torch.randn(PEAK_SHAPE, device=device).contiguous(memory_format=memory_format)
    flops = 2 * 27 * 64 * 64 * PEAK_SHAPE[0] * 32**3
    with torch.inference_mode(), precision(device, bf16):
        timing = timed(lambda: conv(x), repeats, device)
    return flops / timing.best


def network_flops(name: str) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs of network ``name`` on one 27-patch batch, counted on the meta device.

    The diffusion networks are counted on the block as one [1, 2, 96, 96, 96] volume: the same
    computation as the 27 patches (cross-batch reassembles them; without it the volume is cut into them).
    """
    with torch.device("meta"):
        net = build_network(name)
        side = net.patch_size * 3
        x = torch.zeros(1, net.in_channels, side, side, side)
        args = (x, torch.zeros(1)) if net.needs_time else (x,)
        with FlopCounterMode(display=False) as forward:
            net(*args)
        with FlopCounterMode(display=False) as both:
            net(*args).square().mean().backward()
    return forward.get_total_flops(), both.get_total_flops()


@dataclass
class NetworkTiming:
    name: str
    parameters: int
    forward: Timing
    backward: Timing  # forward + backward
    forward_flops: int
    backward_flops: int  # forward + backward


def network_batch(net: Network, device: torch.device) -> tuple[tuple, dict]:
    """A fixed 27-patch batch (args, kwargs) for ``net``."""
    generator = torch.Generator().manual_seed(0)
    size = net.patch_size
    x = torch.randn(BATCH_PATCHES, net.in_channels, size, size, size, generator=generator).to(device)
    if not net.needs_time:
        return (x,), {}
    return (x, torch.zeros(BATCH_PATCHES, device=device)), {"layout": "patches"}


def time_network(name: str, repeats: int, device: torch.device, bf16: bool) -> NetworkTiming:
    """Forward (inference mode) and forward + backward (training mode) of ``name`` on one 27-patch batch."""
    torch.manual_seed(0)
    net = build_network(name).to(device).eval()
    args, kwargs = network_batch(net, device)

    def forward() -> None:
        with torch.inference_mode():
            net(*args, **kwargs)

    def forward_backward() -> None:
        net.zero_grad(set_to_none=True)
        net(*args, **kwargs).float().square().mean().backward()

    with precision(device, bf16):
        forward_timing = timed(forward, repeats, device, warmup=repeats > 1)
        net.train()
        backward_timing = timed(forward_backward, repeats, device, warmup=repeats > 1)
    flops = network_flops(name)
    parameters = sum(p.numel() for p in net.parameters())
    return NetworkTiming(name, parameters, forward_timing, backward_timing, *flops)
