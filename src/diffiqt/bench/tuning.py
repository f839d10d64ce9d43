"""Measurements behind the CPU speed choices: where the time goes, threads, memory format, allocation, compile.

Each function times network forward passes (inference mode) on one 96³ block, or on a volume the size
of a whole brain's head box where the effect depends on tensor size, and returns numbers for the
report; none changes global state beyond what it restores.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from diffiqt.bench.measure import Timing, network_flops, timed
from diffiqt.errors import ConfigError
from diffiqt.nets import blocks, build_network
from diffiqt.nets.diffiqt import DiffusionIQTNet

BLOCK = (96, 96, 96)
HEAD_BOX = (192, 224, 192)  # the head box of the 1 mm MNI brain: what whole-volume enhancement runs on


def block_forward(name: str, shape: tuple[int, int, int] = BLOCK):
    """(net, a closure running one inference forward pass on one [1, 2, *shape] volume)."""
    torch.manual_seed(0)
    net = build_network(name).eval()
    x = torch.randn(1, net.in_channels, *shape, generator=torch.Generator().manual_seed(0))
    logsnr = torch.zeros(1)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return net(x, logsnr)

    return net, forward


def top_operators(name: str, rows: int = 8) -> list[tuple[str, float, float]]:
    """(operator, self CPU seconds, share of the total) of the most expensive operators of one forward pass."""
    from torch.profiler import ProfilerActivity, profile

    _, forward = block_forward(name)
    forward()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        forward()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [(e.key, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total) for e in events[:rows]]


def thread_timings(name: str, counts: list[int], repeats: int) -> dict[int, Timing]:
    """Forward time of ``name`` with each number of torch threads (restored afterwards)."""
    _, forward = block_forward(name)
    before = torch.get_num_threads()
    results = {}
    try:
        for count in counts:
            torch.set_num_threads(count)
            results[count] = timed(forward, repeats, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    return results


def mish_timings(name: str, repeats: int) -> dict[str, Timing]:
    """Forward time with the networks' in-place sliced Mish and with plain F.mish, alternated."""
    _, forward = block_forward(name)
    fast = blocks.mish
    functions: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = (("sliced in-place Mish", fast), ("F.mish", F.mish))
    results: dict[str, Timing] = {label: Timing([], []) for label, _ in functions}
    try:
        forward()
        for _ in range(repeats):
            for label, function in functions:
                # Swapping the networks' Mish for a timing; F.mish names its argument differently, hence the ignore.
                blocks.mish = function  # type: ignore[assignment]
                one = timed(forward, 1, torch.device("cpu"), warmup=False)
                results[label].walls += one.walls
                results[label].cpus += one.cpus
    finally:
        blocks.mish = fast
    return results


def channels_last_share(name: str) -> tuple[int, int]:
    """(outputs in channels_last_3d, all multi-channel 5-D module outputs) of one forward pass on a block."""
    net, forward = block_forward(name)
    counts = [0, 0]

    def record(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 5 and output.shape[1] > 1:
            counts[0] += output.is_contiguous(memory_format=torch.channels_last_3d)
            counts[1] += 1

    handles = [m.register_forward_hook(record) for m in net.modules()]
    forward()
    for handle in handles:
        handle.remove()
    return counts[0], counts[1]


def condition_cache_share(name: str) -> float:
    """Upper bound on what caching the condition's features across steps saves: a fraction of the FLOPs.

    The condition enters only as one input channel of the first 3³ convolution; its half of that
    convolution (2·27·width FLOPs per voxel) is all that does not change between sampling steps.
    """
    with torch.device("meta"):
        net = build_network(name)
    if not isinstance(net, DiffusionIQTNet):
        raise ConfigError(f"network {name!r} is not DiffusionIQT: it has no condition to cache")
    width = net.widths[0]
    forward, _ = network_flops(name)
    return 2 * 27 * width * math.prod(BLOCK) / forward


def compile_timing(name: str, repeats: int) -> tuple[float, Timing, Timing]:
    """(seconds to compile, eager forward, compiled forward) with torch.compile's default (inductor) backend."""
    net, forward = block_forward(name)
    eager = timed(forward, repeats, torch.device("cpu"))
    original = net.forward
    net.forward = torch.compile(original, dynamic=False)
    try:
        begin = time.perf_counter()
        forward()
        seconds = time.perf_counter() - begin
        return seconds, eager, timed(forward, repeats, torch.device("cpu"))
    finally:
        net.forward = original


def _forward_in_child(name: str, threads: int, repeats: int, shape: tuple[int, int, int]) -> Timing:
    torch.set_num_threads(threads)
    _, forward = block_forward(name, shape)
    return timed(forward, repeats, torch.device("cpu"))


def huge_page_timings(
    name: str, threads: int, repeats: int, shape: tuple[int, int, int] = HEAD_BOX
) -> dict[str, Timing]:
    """Forward time on a ``shape`` volume in fresh processes with PyTorch's huge-page allocation off and on.

    ``THP_MEM_ALLOC_ENABLE=1`` makes PyTorch's CPU allocator ask the kernel for 2 MiB pages for large
    tensors, so that a fresh tensor of hundreds of MiB costs hundreds, not tens of thousands, of page
    faults. It is read at the first allocation, so only a new process shows its effect.
    """
    results = {}
    saved = os.environ.get("THP_MEM_ALLOC_ENABLE")
    try:
        for value in ("0", "1"):
            os.environ["THP_MEM_ALLOC_ENABLE"] = value
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                arguments = (name, threads, repeats, shape)
                results[f"THP_MEM_ALLOC_ENABLE={value}"] = pool.apply(_forward_in_child, arguments)
    finally:
        if saved is None:
            os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
        else:
            os.environ["THP_MEM_ALLOC_ENABLE"] = saved
    return results
