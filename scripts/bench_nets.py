"""Time the networks on this machine's CPU: one 27×C×32³ batch (the 27 patches of a 96³ block).

    python scripts/bench_nets.py                              # paper preset, forward only
    python scripts/bench_nets.py small --backward             # forward + backward (one training step's compute)
    python scripts/bench_nets.py --conv                       # one 3³ conv: contiguous vs channels_last_3d

Prints Markdown rows for docs/benchmarks.md with the date, CPU, torch version, threads and the load
average, since other processes on a shared machine slow every number down. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch

from diffiqt.bench.measure import cpu_name, load_average
from diffiqt.nets import build_network, count_parameters


def machine_line(threads: int) -> str:
    return (
        f"{datetime.date.today().isoformat()} · {cpu_name()} · {os.cpu_count()} cores, torch threads {threads} · "
        f"torch {torch.__version__} · load average {load_average()}"
    )


def timed(step, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``repeats`` calls of ``step`` after one warm-up call."""
    step()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def network_step(name: str, backward: bool):
    """A closure running one forward (and backward) pass of ``name`` on a 27-patch batch."""
    torch.manual_seed(0)
    net = build_network(name).train(backward)
    size = net.patch_size
    x = torch.randn(27, net.in_channels, size, size, size)
    args = (x, torch.zeros(27)) if net.needs_time else (x,)
    kwargs = {"layout": "patches"} if net.needs_time else {}

    def step() -> None:
        if backward:
            net.zero_grad(set_to_none=True)
            net(*args, **kwargs).square().mean().backward()
        else:
            with torch.no_grad():
                net(*args, **kwargs)

    return net, step


def bench_networks(names: list[str], backward: bool, repeats: int) -> None:
    mode = "forward + backward" if backward else "forward"
    print("| network | params | pass | wall median (s) | wall min (s) | process CPU (s) |")
    print("|---|---:|---|---:|---:|---:|")
    for name in names:
        net, step = network_step(name, backward)
        walls, cpus = timed(step, repeats)
        print(
            f"| {name} | {count_parameters(net) / 1e6:.1f}M | {mode} | {statistics.median(walls):.2f} | "
            f"{min(walls):.2f} | {statistics.median(cpus):.2f} |",
            flush=True,
        )


def bench_conv_formats(repeats: int) -> None:
    """GFLOP/s of a 64→64 3³ convolution on [1, 64, 96, 96, 96] in both memory formats."""
    print("| memory format | forward GFLOP/s | forward + backward GFLOP/s |")
    print("|---|---:|---:|")
    flops = 2 * 27 * 64 * 64 * 96**3
    for label, memory_format in (("contiguous", torch.contiguous_format), ("channels_last_3d", torch.channels_last_3d)):
        forward, both = conv_times(memory_format, repeats)
        print(f"| {label} | {flops / min(forward) / 1e9:.0f} | {3 * flops / min(both) / 1e9:.0f} |", flush=True)


def conv_times(memory_format: torch.memory_format, repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds of the convolution's forward passes and of its forward + backward passes."""
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(memory_format=memory_format)
    x = torch.randn(1, 64, 96, 96, 96).to(memory_format=memory_format).requires_grad_()
    with torch.no_grad():
        forward, _ = timed(lambda: conv(x), repeats)
    both, _ = timed(lambda: conv(x).sum().backward(), repeats)
    return forward, both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("networks", nargs="*", default=["paper"], help="registry names (default: paper)")
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead of forward")
    parser.add_argument("--conv", action="store_true", help="only compare memory formats on one convolution")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), end="\n\n")
    if args.conv:
        bench_conv_formats(args.repeats)
    else:
        bench_networks(args.networks, args.backward, args.repeats)
    print(f"\nload average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
