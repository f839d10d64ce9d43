"""``diffiqt bench-speed`` in one function: measure everything in one run and write one Markdown section.

Parts (``BenchOptions.parts``):

* ``networks``: forward and forward + backward of each preset on one 27 × 32³ batch, FLOPs counted by
  FlopCounterMode, achieved FLOP/s and its share of the machine's peak, which is measured in the same
  run (a 64 -> 64 3³ convolution forward in channels_last_3d, best of 3 × ``repeats``);
* ``enhance``: the three enhancement schemes of :mod:`diffiqt.bench.enhancement` on a central region
  of the simulated MNI brain, measured in full;
* ``full-brain``: the same on the whole brain: scheme (a) measured, the windowed schemes timed on a few
  windows and extrapolated;
* ``quality``: PSNR/SSIM of whole-volume enhancement against the number of steps, for each sampler;
* ``tuning``: where the time goes and what the CPU speed choices buy, for one preset (CPU only).

Every table says what was measured and what was extrapolated, and how.
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, get_args

import torch

from diffiqt.bench import enhancement, measure, tuning
from diffiqt.config import DEFAULT_STEPS, SamplerName
from diffiqt.errors import DiffiqtError

PARTS = ("networks", "enhance", "full-brain", "quality", "tuning")
PRESETS = ("paper", "no-crossbatch", "no-deepfeature-no-crossbatch", "small")


@dataclass
class BenchOptions:
    presets: list[str] = field(default_factory=lambda: list(PRESETS))
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    repeats: int = 3
    device: str = "cpu"
    bf16: bool = False
    model: str = "default"
    steps: int = DEFAULT_STEPS
    region: int | None = 64  # edge of the central region for the scheme comparison; None: whole brain
    samples: int = 4  # samples averaged by scheme (c)
    blend: str = "mean"  # how scheme (c) combines overlapping windows
    windows: int = 2  # windows timed per windowed scheme for the whole-brain extrapolation
    sweep_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 20])
    samplers: list[str] = field(default_factory=lambda: list(get_args(SamplerName)))
    tuning_preset: str = "small"
    compile: bool = False
    seed: int = 0


def log(message: str) -> None:
    """Progress on stderr: stdout carries the report."""
    print(f"bench-speed: {message}", file=sys.stderr, flush=True)


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; numbers right-aligned."""
    numeric = [any(isinstance(row[i], (int, float)) for row in rows) for i in range(len(header))]
    align = ["---:" if column else "---" for column in numeric]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def run(options: BenchOptions, command: str) -> str:
    """Run the chosen parts and return the Markdown section."""
    device = torch.device(options.device)
    sections = [f"## Speed\n\n`{command}`\n\n{measure.machine_line(device, options.bf16)}"]
    log("measuring the convolution peak")
    peak = measure.conv_peak(peak_repeats(options), device, options.bf16)
    sections.append(peak_section(peak, options, device))
    if "networks" in options.parts:
        sections.append(networks_section(options, device, peak))
    if {"enhance", "full-brain", "quality"} & set(options.parts):
        sections.append(enhancement_sections(options))
    if "tuning" in options.parts and device.type == "cpu":
        sections.append(tuning_section(options))
    sections.append(f"Load average at the end: {measure.load_average()}.")
    return "\n\n".join(sections) + "\n"


def peak_repeats(options: BenchOptions) -> int:
    """The peak probe takes ~0.1 s, and on a shared machine only the best of many passes is the peak."""
    return 3 * max(options.repeats, 1)


def peak_section(peak: float, options: BenchOptions, device: torch.device) -> str:
    rows = [["channels_last_3d (the peak used below)", peak / 1e9]]
    if device.type == "cpu":
        contiguous = measure.conv_peak(peak_repeats(options), device, False, torch.contiguous_format)
        rows.append(["contiguous (default layout)", contiguous / 1e9])
    return (
        "### Machine peak\n\nOne 64 → 64 3³ convolution forward on [2, 64, 32, 32, 32], "
        f"best of {peak_repeats(options)}:\n\n" + table(["memory format", "GFLOP/s"], rows)
    )


def networks_section(options: BenchOptions, device: torch.device, peak: float) -> str:
    rows = []
    for name in options.presets:
        log(f"timing network {name}")
        t = measure.time_network(name, options.repeats, device, options.bf16)
        for label, timing, flops in (
            ("forward", t.forward, t.forward_flops),
            ("forward + backward", t.backward, t.backward_flops),
        ):
            rate = flops / timing.best
            rows.append(
                [
                    name,
                    f"{t.parameters / 1e6:.1f}M",
                    label,
                    flops / 1e9,
                    timing.best,
                    timing.median,
                    rate / 1e9,
                    f"{rate / peak:.0%}",
                ]
            )
    warmup = "after one warm-up pass" if options.repeats > 1 else "no warm-up (first pass included)"
    return (
        "### Networks: one 27 × 32³ batch (the 27 patches of a 96³ block)\n\n"
        f"Best and median wall time of {options.repeats} passes, {warmup}; forward in inference mode, "
        "forward + backward in training mode. GFLOP by FlopCounterMode (convolutions and matrix "
        "products; backward ≈ 2 × forward); GFLOP/s from the best time; share of the peak above.\n\n"
        + table(["preset", "params", "pass", "GFLOP", "best (s)", "median (s)", "GFLOP/s", "of peak"], rows)
    )


def enhancement_sections(options: BenchOptions) -> str:
    """The scheme comparison and the quality sweep, or why they were skipped."""
    try:
        model = enhancement.load_bench_model(options.model)
    except DiffiqtError as exc:
        return (
            f"### Enhancement\n\nSkipped: no trained model could be loaded ({exc}). Pass `--model` a "
            "checkpoint, or `--model untrained:small` for timings only."
        )
    warning = ""
    if options.model.startswith(enhancement.UNTRAINED):
        warning = (
            f"**{model.description.upper()}: the network is untrained, so PSNR, SSIM and seams below "
            "say nothing about quality; only the times and memory are meaningful.**\n\n"
        )
    sections = {"enhance": schemes_section, "full-brain": full_brain_section, "quality": sweep_section}
    return warning + "\n\n".join(section(options, model) for part, section in sections.items() if part in options.parts)


def scheme_jobs(options: BenchOptions, brain: enhancement.Brain) -> dict[str, enhancement.SchemeJob]:
    """The three schemes as jobs on ``brain``."""
    common: dict[str, Any] = dict(
        brain=brain,
        model=options.model,
        steps=options.steps,
        seed=options.seed,
        device=options.device,
        bf16=options.bf16,
        threads=torch.get_num_threads(),
    )
    return {
        "(a) whole volume, cross-batch": enhancement.SchemeJob(scheme="whole", **common),
        "(b) 96³ windows, central patch": enhancement.SchemeJob(scheme="windows", blend="centre", **common),
        f"(c) 96³ windows, {options.blend} blend, {options.samples} samples": enhancement.SchemeJob(
            scheme="windows", blend=options.blend, samples=options.samples, **common
        ),
    }


def schemes_section(options: BenchOptions, model) -> str:
    log("simulating the low-field MNI brain")
    brain = enhancement.mni_brain(options.region, options.seed)
    rows, times = [], []
    for label, job in scheme_jobs(options, brain).items():
        log(f"enhancing the {'region' if options.region else 'brain'}: {label}")
        outcome = enhancement.run_isolated(job)
        assert outcome.mean is not None  # only a timing job (time_windows > 0) leaves it out
        scores = enhancement.quality(outcome.mean, brain, outcome.box_lower, model.cell)
        times.append(outcome.seconds)
        rows.append(
            [
                label,
                outcome.seconds,
                outcome.memory_start_mb,
                outcome.memory_peak_mb,
                scores["psnr"],
                scores["ssim"],
                scores["seam"],
            ]
        )
    lf = enhancement.interpolation_quality(brain, model)
    rows.append(["low-field input, cubic interpolation", "-", "-", "-", lf["psnr"], lf["ssim"], lf["seam"]])
    return (
        f"### Enhancement: three schemes\n\n{input_text(options, model, brain, outcome)} All measured in "
        f"full, each scheme in a fresh process; memory: {outcome.memory_kind}, at the start (interpreter, "
        "libraries, model) and at its peak. PSNR/SSIM: strict protocol against the high-field truth inside "
        "the brain mask. Seam: mean |jump| across 32-voxel block borders minus across mid-block planes, "
        "inside the brain, in excess of the same for the truth, in % of its intensity range (0: no "
        "seams).\n\n"
        + table(["scheme", "time (s)", "start (MiB)", "peak (MiB)", "PSNR (dB)", "SSIM", "seam (%)"], rows)
        + f"\n\nTime ratios (measured): (b)/(a) = {times[1] / times[0]:.1f}, (c)/(a) = {times[2] / times[0]:.1f}."
    )


def input_text(options: BenchOptions, model, brain: enhancement.Brain, outcome: enhancement.SchemeOutcome) -> str:
    """One sentence naming the model, the input, the head box and the sampling settings."""
    return (
        f"Model: {model.description}. Input: {brain.label}, x{enhancement.LF_FACTOR} low-field simulation "
        f"(seed {options.seed}); head box {'×'.join(map(str, outcome.box_shape))}; sampler paper, "
        f"{options.steps} steps, seed {options.seed}, the same noise for every scheme."
    )


def full_brain_section(options: BenchOptions, model) -> str:
    """Scheme (a) on the whole brain, measured; (b) and (c) extrapolated from a few windows."""
    log("simulating the low-field MNI brain (whole)")
    brain = enhancement.mni_brain(None, options.seed)
    jobs = scheme_jobs(options, brain)
    rows, totals = [], []
    for index, (label, job) in enumerate(jobs.items()):
        log(f"whole brain: {label}")
        if index:
            job.time_windows = options.windows
        outcome = enhancement.run_isolated(job)
        if index == 0:
            totals.append(outcome.seconds)
            rows.append([label, "-", "-", outcome.seconds, "measured", outcome.memory_peak_mb])
            continue
        per_window = statistics.median(outcome.window_seconds)
        total = per_window * outcome.windows * options.steps
        totals.append(total)
        rows.append(
            [
                label,
                outcome.windows,
                per_window,
                total,
                f"extrapolated: median of {len(outcome.window_seconds)} windows × {outcome.windows} windows "
                f"× {options.steps} steps",
                outcome.memory_peak_mb,
            ]
        )
    return (
        f"### Enhancement of the whole brain\n\n{input_text(options, model, brain, outcome)} "
        f"Scheme (a) measured in full; (b) and (c) timed on "
        f"{options.windows} windows near the centre after one warm-up window (each window: all samples "
        "as one batch). Memory "
        f"({outcome.memory_kind}): each scheme's own process; for (b) and (c) the peak while timing "
        "their windows.\n\n"
        + table(["scheme", "windows per step", "s per window", "time (s)", "how", "peak memory (MiB)"], rows)
        + f"\n\nTime ratios: (b)/(a) = {totals[1] / totals[0]:.0f}, (c)/(a) = {totals[2] / totals[0]:.0f} "
        "((a) measured, (b) and (c) extrapolated)."
    )


def sweep_section(options: BenchOptions, model) -> str:
    log("quality against steps")
    brain = enhancement.mni_brain(options.region, options.seed)
    with measure.precision(torch.device(options.device), options.bf16):
        rows = enhancement.quality_sweep(
            brain, model, options.samplers, options.sweep_steps, options.seed, options.device
        )
    return (
        f"### Quality against sampling steps\n\nWhole-volume enhancement (a) of the {brain.label}, one "
        f"sample, seed {options.seed}; measured.\n\n"
        + table(
            ["sampler", "steps", "time (s)", "PSNR (dB)", "SSIM"],
            [[r["sampler"], r["steps"], r["seconds"], r["psnr"], r["ssim"]] for r in rows],
        )
    )


def tuning_section(options: BenchOptions) -> str:
    name, repeats = options.tuning_preset, options.repeats
    threads = sorted({1, 2, os.cpu_count() or 1})
    steps: list[tuple[str, Callable[[], str]]] = [
        ("profiling", lambda: profile_text(name)),
        ("Mish", lambda: timings_text("Mish", tuning.mish_timings(name, repeats))),
        ("threads", lambda: timings_text("torch threads", tuning.thread_timings(name, threads, repeats))),
        ("huge pages", lambda: huge_pages_text(name, repeats)),
        ("memory format", lambda: memory_format_text(name)),
    ]
    if options.compile:
        steps.append(("torch.compile", lambda: compile_text(name, options.repeats)))
    texts = []
    for label, step in steps:
        log(f"tuning: {label}")
        texts.append(step())
    return f"### CPU tuning ({name}, one forward pass on a 96³ block, inference mode)\n\n" + "\n\n".join(texts)


def profile_text(name: str) -> str:
    rows = [[op, seconds, f"{share:.0%}"] for op, seconds, share in tuning.top_operators(name)]
    return "Where the time goes (torch.profiler, self CPU time):\n\n" + table(["operator", "s", "share"], rows)


def timings_text(what: str, timings: dict) -> str:
    rows = [[str(key), t.best, t.median] for key, t in timings.items()]
    return table([what, "best (s)", "median (s)"], rows)


def huge_pages_text(name: str, repeats: int) -> str:
    timings = tuning.huge_page_timings(name, torch.get_num_threads(), min(repeats, 2))  # ~10x a block each
    return (
        f"On a {'×'.join(map(str, tuning.HEAD_BOX))} volume (a whole brain's head box), each in a fresh "
        "process:\n\n" + timings_text("allocator", timings)
    )


def memory_format_text(name: str) -> str:
    inside, total = tuning.channels_last_share(name)
    share = tuning.condition_cache_share(name)
    return (
        f"{inside} of {total} multi-channel module outputs are channels_last_3d. Caching the "
        f"condition's features across steps could save at most {share:.2%} of the FLOPs (its half of "
        "the first convolution): not worth doing."
    )


def compile_text(name: str, repeats: int) -> str:
    seconds, eager, compiled = tuning.compile_timing(name, repeats)
    return f"torch.compile (inductor) took {seconds:.0f} s to compile:\n\n" + timings_text(
        "forward", {"eager": eager, "compiled": compiled}
    )
