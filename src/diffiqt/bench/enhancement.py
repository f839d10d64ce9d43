"""Enhancement of a real brain by the three schemes, each in a fresh process: time, peak memory, quality.

(a) ``whole``: :func:`diffiqt.inference.enhance.enhance`, the head box as one tensor (cross-batch inference).
(b) ``windows`` with blend "centre": the authors' scheme (:class:`~diffiqt.inference.tiling.SlidingWindowDenoiser`).
(c) ``windows`` with a blend and several samples averaged.

The input is the real MNI152 brain (or a central region of it) degraded by the x8 low-field simulator,
the same for every scheme, and every scheme draws the same noise. Each run happens in a freshly
spawned process so that its peak resident memory (``ru_maxrss``) is its own; tracemalloc does not see
torch's allocations. Windowed schemes on a whole brain take hours on a CPU; with ``time_windows`` a run
only times that many windows of one network evaluation, for the caller to extrapolate.
"""

from __future__ import annotations

import functools
import multiprocessing
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from diffiqt.bench.measure import precision
from diffiqt.bench.schemes import sample_volume, seam_measure
from diffiqt.config import DEFAULT_SAMPLER
from diffiqt.evaluation.heldout import central_box
from diffiqt.imaging.io import Volume
from diffiqt.imaging.resample import shared_extent, to_isotropic
from diffiqt.inference.enhance import HEAD_MARGIN_MM, EnhanceOptions, enhance, extract, head_box, insert
from diffiqt.inference.tiling import SlidingWindowDenoiser
from diffiqt.models.loading import Model, load_model
from diffiqt.preprocess import denormalise, lf_scale, normalise

UNTRAINED = "untrained:"  # model spec prefix: a freshly initialised preset, for timings only
LF_FACTOR = 8  # slice-spacing factor of the simulated low-field scan


@dataclass
class Brain:
    """A simulated low-field scan of a real brain (thick slices), its high-field truth and brain mask."""

    lf: Volume
    hf: Volume
    mask: np.ndarray
    label: str


@functools.lru_cache(maxsize=2)
def mni_brain(region: int | None, seed: int = 0) -> Brain:
    """The MNI152 brain, or its central ``region``³ cube, and an x8 low-field simulation of it (axial slices)."""
    from diffiqt.anatomy.brains import TissueMaps, mni152
    from diffiqt.simulation import LowFieldParams, simulate_low_field

    mni = mni152()
    hf, maps, mask, label = mni.t1, mni.tissues, mni.mask, f"whole MNI152 brain {'×'.join(map(str, mni.t1.shape))}"
    assert maps is not None  # the bundled MNI brain comes with its tissue maps
    if region:
        lower, upper = central_box(mni.mask, region)
        hf = hf.crop(lower, upper)
        maps = TissueMaps(**{k: v.crop(lower, upper) for k, v in maps.as_dict().items()})
        mask = mask[tuple(slice(a, b) for a, b in zip(lower, upper))]
        label = f"central {'×'.join(map(str, hf.shape))} region of the MNI152 brain"
    params = LowFieldParams.for_factor(LF_FACTOR, float(hf.voxel_size[2]))
    lf = simulate_low_field(hf, maps, params, np.random.default_rng(seed), upsample=False).lf
    return Brain(lf, hf, mask, label)


def load_bench_model(spec: str) -> Model:
    """A trained model (shipped name or checkpoint, as ``diffiqt enhance --model``) or ``untrained:PRESET``."""
    if not spec.startswith(UNTRAINED):
        return load_model(spec)
    from diffiqt.nets import build_network

    preset = spec[len(UNTRAINED) :]
    torch.manual_seed(0)
    return Model(build_network(preset).eval(), description=f"UNTRAINED {preset} (timings only)")


@dataclass
class SchemeJob:
    brain: Brain
    model: str  # a spec for :func:`load_bench_model`
    scheme: str  # "whole" or "windows"
    steps: int
    samples: int = 1
    blend: str = "centre"
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    threads: int = 1
    time_windows: int = 0  # > 0: only time this many windows of one evaluation


@dataclass
class SchemeOutcome:
    seconds: float
    memory_start_mb: float
    memory_peak_mb: float
    memory_kind: str  # what the memory figures are
    box_lower: list[int]
    box_shape: list[int]
    windows: int = 0  # windows per network evaluation of the head box (windowed schemes)
    window_seconds: list[float] = field(default_factory=list)
    mean: np.ndarray | None = None  # the enhanced volume on the model grid (None if only timed)


def run_isolated(job: SchemeJob) -> SchemeOutcome:
    """:func:`run_scheme` in a freshly spawned process, so that its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_scheme, (job,))


def memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far (MiB): the process's peak resident set on CPU, allocated memory on CUDA.

    Linux's VmHWM belongs to the process's own address space; ru_maxrss would also count the parent's
    resident set at the fork that preceded the spawned interpreter's exec.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA peak allocated"
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024, "process peak RSS (VmHWM)"
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS (ru_maxrss)"


def run_scheme(job: SchemeJob) -> SchemeOutcome:
    """Enhance ``job.brain`` by one scheme (in the calling process) and measure it."""
    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    model = load_bench_model(job.model)
    model.net.to(device)
    start, _ = memory_mb(device)
    with precision(device, job.bf16):
        if job.scheme == "whole":
            outcome = run_whole(job, model)
        else:
            outcome = run_windows(job, model, device)
    outcome.memory_start_mb = start
    outcome.memory_peak_mb, outcome.memory_kind = memory_mb(device)
    return outcome


def run_whole(job: SchemeJob, model: Model) -> SchemeOutcome:
    options = EnhanceOptions(job.steps, job.sampler, job.samples, job.seed, job.device)
    begin = time.perf_counter()
    result = enhance(job.brain.lf, model, options)
    seconds = time.perf_counter() - begin
    lower, upper = np.array(result.info["box_lower"]), np.array(result.info["box_upper"])
    return SchemeOutcome(seconds, 0.0, 0.0, "", lower.tolist(), (upper - lower).tolist(), mean=result.mean.data)


def run_windows(job: SchemeJob, model: Model, device: torch.device) -> SchemeOutcome:
    """The sliding-window scheme over the head box, prepared exactly as :func:`enhance` prepares it."""
    begin = time.perf_counter()
    grid = to_isotropic(job.brain.lf, model.voxel_mm)
    scale = lf_scale(grid.data)
    lower, upper = head_box(grid.data, model.cell, int(round(HEAD_MARGIN_MM / model.voxel_mm)))
    cond = torch.from_numpy(extract(normalise(grid.data, scale), lower, upper))[None, None].to(device)
    denoiser = SlidingWindowDenoiser(model.denoiser(), model.cell, job.blend).to(device)
    outcome = SchemeOutcome(
        0.0,
        0.0,
        0.0,
        "",
        lower.tolist(),
        (upper - lower).tolist(),
        windows=denoiser.window_count(tuple(cond.shape[2:])),
    )
    if job.time_windows:
        outcome.window_seconds = time_windows(denoiser, cond, job, device)
        return outcome
    samples = sample_volume(denoiser, cond, job.sampler, job.steps, job.samples, job.seed)
    mean = grid.data.copy()
    insert(mean, denormalise(samples.float().mean(dim=0)[0].cpu().numpy(), scale), lower)
    outcome.seconds, outcome.mean = time.perf_counter() - begin, mean
    return outcome


def time_windows(
    denoiser: SlidingWindowDenoiser, cond: torch.Tensor, job: SchemeJob, device: torch.device
) -> list[float]:
    """Seconds of ``job.time_windows`` single-window evaluations (of all samples) near the box centre.

    One untimed warm-up window comes first: oneDNN prepares its kernels for new shapes on first use.
    """
    cell = denoiser.cell
    padded = torch.nn.functional.pad(cond.expand(job.samples, -1, -1, -1, -1), (cell,) * 6)
    x_t = torch.randn(padded.shape, generator=torch.Generator().manual_seed(job.seed)).to(device)
    grid = [n // cell for n in cond.shape[2:]]
    seconds = []
    with torch.inference_mode():
        for i in range(job.time_windows + 1):
            centre = (grid[0] // 2, grid[1] // 2, (grid[2] // 2 + i % 2) % grid[2])  # two central cells in turn
            begin = time.perf_counter()
            denoiser.predict_windows(padded, x_t, 0.5, [centre])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - begin)
    return seconds[1:]


def quality(mean: np.ndarray, brain: Brain, box_lower, cell: int) -> dict[str, float | None]:
    """PSNR and SSIM against the high-field truth (strict protocol, inside the brain mask), and seams.

    ``seam``: :func:`seam_measure` of the result minus that of the truth on the same planes (so that
    anatomy that happens to lie on a block border, such as the midline, cancels), as a percentage of the
    truth's intensity range (its 99.5th percentile in the mask, as for PSNR). The model grid of an x8
    scan can be a few slices longer than the truth; both are cut to their common extent (the grids share
    voxel 0).
    """
    from diffiqt.evaluation.metrics import (
        strict_protocol,
    )  # here: it imports scikit-learn, 2 s in every spawned process

    common = shared_extent(mean.shape, brain.hf.shape)
    pred, truth, mask = mean[common], brain.hf.data[common], brain.mask[common]
    scores = strict_protocol(pred, truth, mask)
    excess = seam_measure(pred, mask, cell, tuple(box_lower)) - seam_measure(truth, mask, cell, tuple(box_lower))
    return {
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "seam": float(100 * excess / np.percentile(truth[mask], 99.5)),
    }


def interpolation_quality(brain: Brain, model: Model) -> dict[str, float | None]:
    """The same scores for the low-field scan itself, cubically interpolated onto the model grid."""
    grid = to_isotropic(brain.lf, model.voxel_mm).data
    lower, _ = head_box(grid, model.cell, int(round(HEAD_MARGIN_MM / model.voxel_mm)))
    return quality(grid, brain, lower, model.cell)


def quality_sweep(
    brain: Brain, model: Model, samplers: list[str], steps: list[int], seed: int, device: str
) -> list[dict]:
    """PSNR/SSIM and wall time of whole-volume enhancement for every sampler and number of steps."""
    rows = []
    for sampler in samplers:
        for count in steps:
            begin = time.perf_counter()
            result = enhance(brain.lf, model, EnhanceOptions(count, sampler, 1, seed, device))
            seconds = time.perf_counter() - begin
            scores = quality(result.mean.data, brain, result.info["box_lower"], model.cell)
            rows.append({"sampler": sampler, "steps": count, "seconds": seconds, **scores})
    return rows
