"""The training loop: diffusion models (paper's Algorithm 1) and supervised baselines alike.

One process per device (``torchrun`` for several; see :mod:`diffiqt.distributed`).
Each step draws ``batch_size`` blocks per process from :class:`diffiqt.data.BlockStream`,
splits them into the network's layout (27 patches per block for cross-batch
networks), and takes an AdamW step with gradient clipping; an EMA of the
weights is kept for validation and inference.

Randomness is counter-based: before step ``k`` the global torch generator is
seeded from (seed, rank, k), and the data stream is a function of (seed, rank,
batch index). A resumed run therefore replays exactly what the uninterrupted
run would have done, with no RNG state to save.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffiqt import distributed as dist
from diffiqt.distributed import resolve_device
from diffiqt.checkpoint import (Checkpoint, build_network, check_fits, list_checkpoints, load_weights,
                                prune_checkpoints, read_checkpoint, read_tensors, restore_optimizer, save_checkpoint)
from diffiqt.config import DataConfig, DiffusionConfig, TrainConfig, from_dict, merge, parse_assignment, read_file, validate
from diffiqt.data import (FOREGROUND_FRACTION, SCALE_PERCENTILE, BlockStream, Pair, StoredPairStream, make_loader,
                          make_pair, model_voxel_mm, training_and_validation, validation_blocks)
from diffiqt.datasets import BrainSample
from diffiqt.diffusion import SAMPLERS, Denoiser, diffusion_loss, reconstruction_loss
from diffiqt.errors import ConfigError, DiffiqtError
from diffiqt.io import save_json
from diffiqt.nets.base import Network
from diffiqt.nets.linear_iqt import LinearIQT
from diffiqt.presimulated import read_pairs_file

PATCHES_PER_BLOCK = 27  # the 3x3x3 grid of the cross-batch mechanism
LINEAR_IQT_STREAM = 7  # keeps the seeds of fit_linear_iqt's pairs apart from other streams
# Keys a resumed run may change: none of them alters what is computed.
RESUMABLE_KEYS = {"steps", "max_minutes", "device", "log_every", "val_every", "checkpoint_every", "keep_checkpoints",
                  "tensorboard"}
NORMALISATION = {"method": "lf-percentile", "map": "x / scale", "percentile": SCALE_PERCENTILE,
                 "foreground": f"lf > {FOREGROUND_FRACTION} * percentile(lf, 99.5)"}


class TrainingInterrupted(DiffiqtError):
    """Training was stopped (Ctrl-C) before it finished."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    val: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- pieces

def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of one training step of one process."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def resolve_layout(net: Network, cfg: TrainConfig) -> str:
    """'patches' or 'volume': how blocks are fed to the network (auto: patches iff cross-batch)."""
    layout = cfg.data.layout
    if layout == "auto":
        layout = "patches" if net.cross_batch and net.slice_fold == 1 else "volume"
    fold = net.slice_fold
    if fold > 1 and (cfg.data.slice_block is None or cfg.data.slice_block % (fold * net.patch_size)
                     or cfg.data.block_size % net.patch_size):
        raise ConfigError(f"a network with slice_fold {fold} trains on blocks with the slice axis last: set "
                          f"data.slice_block to a multiple of {fold * net.patch_size} and data.block_size to a "
                          f"multiple of {net.patch_size}")
    if fold == 1 and cfg.data.slice_block is not None:
        raise ConfigError("data.slice_block is for networks with slice_fold > 1; leave it null")
    if layout == "patches" and cfg.data.block_size != 3 * net.patch_size:
        raise ConfigError(f"data.block_size {cfg.data.block_size} must be 3 x the network's patch size "
                          f"{net.patch_size} in the patch layout")
    return layout


def to_layout(blocks: Tensor, layout: str) -> Tensor:
    """[B, C, S, S, S] blocks -> [B*27, C, S/3, S/3, S/3] patches (patch layout) or unchanged."""
    if layout == "volume":
        return blocks
    from diffiqt.nets.crossbatch import block_to_patches

    return block_to_patches(blocks, blocks.shape[-1] // 3)


def from_layout(x: Tensor, layout: str) -> Tensor:
    """Inverse of :func:`to_layout`."""
    if layout == "volume":
        return x
    from diffiqt.nets.crossbatch import patches_to_block

    return patches_to_block(x)


class EMA:
    """Exponential moving average of a network's weights (buffers are copied)."""

    def __init__(self, net: Network, decay: float):
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, net: Network, step: int) -> None:
        # A shorter memory early on, so that the average is not dominated by the initial weights.
        decay = min(self.decay, (1 + step) / (10 + step))
        for avg, new in zip(self.module.parameters(), net.parameters()):
            avg.lerp_(new.detach(), 1.0 - decay)
        for kept, buffer in zip(self.module.buffers(), net.buffers()):
            kept.copy_(buffer)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Constant after a linear warm-up of ``optim.warmup_steps``."""
    warm = cfg.optim.warmup_steps
    return cfg.optim.lr * min(1.0, (step + 1) / warm) if warm else cfg.optim.lr


def batch_loss(model: nn.Module, needs_time: bool, batch: dict, layout: str, diffusion: DiffusionConfig) -> Tensor:
    """The loss of one batch of blocks ({"target", "cond"}: [B, 1, S, S, S]) in the network's layout.

    Diffusion networks: Algorithm 1 with t ~ U[0, 1) per block (shared by its
    27 patches) and eps ~ N(0, I). Baselines: loss(net(cond), target).
    Draws come from torch's global generator, seeded per step by the caller.
    """
    target, cond = to_layout(batch["target"], layout), to_layout(batch["cond"], layout)
    if not needs_time:
        return reconstruction_loss(model(cond), target, diffusion.loss)
    group = PATCHES_PER_BLOCK if layout == "patches" else 1
    t = torch.rand(target.shape[0] // group, device=target.device)
    if diffusion.mean_fraction > 0:  # drawn only then, so that runs without it keep their random streams
        t = torch.where(torch.rand(t.shape, device=t.device) < diffusion.mean_fraction, torch.ones_like(t), t)
    t = t.repeat_interleave(group)
    noise = torch.randn(target.shape, device=target.device)
    return diffusion_loss(Denoiser(model, diffusion.residual_sigma), target, cond, t, noise, diffusion.loss, layout=layout)


@torch.no_grad()
def validate_blocks(net: Network, blocks: dict, cfg: TrainConfig, layout: str, device: torch.device) -> dict:
    """On the validation blocks: the training loss, and the PSNR of the prediction and of the LF input.

    The loss is :func:`batch_loss` with times and noise from a fixed seed; diffusion
    networks are sampled with the configured sampler and steps from a fixed seed; so
    every number is comparable across validations. PSNR is taken over head voxels in
    normalised units with data range 1 (the LF's 99th percentile); the LF input is the
    cubic-interpolated condition.
    """
    torch.manual_seed(cfg.seed)  # every training step reseeds the generator, so this changes nothing else
    with autocast(device, cfg):
        on_device = {k: blocks[k].to(device) for k in ("target", "cond")}
        val_loss = float(batch_loss(net, net.needs_time, on_device, layout, cfg.diffusion))
    sampler = SAMPLERS[cfg.diffusion.sampler]
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    predictions = []
    for cond in blocks["cond"].split(1):
        with autocast(device, cfg):
            net_cond = to_layout(cond.to(device), layout)
            if net.needs_time:
                out = sampler(Denoiser(net, cfg.diffusion.residual_sigma), net_cond, cfg.diffusion.sample_steps,
                              generator, layout=layout)
            else:
                out = net(net_cond)
        predictions.append(from_layout(out.float(), layout).cpu())
    from diffiqt import metrics

    target, mask = blocks["target"].numpy(), blocks["mask"].numpy()
    return {"val_loss": val_loss, "val_psnr": metrics.psnr(torch.cat(predictions).numpy(), target, 1.0, mask),
            "val_psnr_interp": metrics.psnr(blocks["cond"].numpy(), target, 1.0, mask)}


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 autocast on CUDA when enabled; never on CPU (where bf16 is very slow)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)


class CsvLog:
    """Append rows to a CSV file; on resume, rows after the resumed step are dropped first."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None):
        self.path, self.columns = path, columns
        rows = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({k: _csv_value(row.get(k)) for k in self.columns})


def _csv_value(value):
    return f"{value:.6g}" if isinstance(value, float) else value


# ----------------------------------------------------------------------------- run folder and config

def resume_config(out: Path, assignments: tuple[str, ...] = ()) -> TrainConfig:
    """The saved config of the run in ``out`` with ``KEY=VALUE`` changes to resumable keys only."""
    saved_path = Path(out) / "config.json"
    if not saved_path.is_file():
        raise ConfigError(f"{out}: no run to resume (config.json missing)")
    saved = read_file(saved_path)
    data = saved
    for text in assignments:
        data = merge(data, parse_assignment(text))
    changed = sorted(k for k in data if data[k] != saved.get(k))
    if set(changed) - RESUMABLE_KEYS:
        bad = sorted(set(changed) - RESUMABLE_KEYS)[0]
        raise ConfigError(f"cannot change {bad!r} when resuming (only {', '.join(sorted(RESUMABLE_KEYS))})")
    return from_dict(TrainConfig, data)


def check_resumable(cfg: TrainConfig, ckpt: Checkpoint) -> None:
    """The checkpoint must come from the same configuration up to the resumable keys.

    The saved config is completed with the defaults first, so that a key added to the
    config since the checkpoint was written (at its default) is no difference.
    """
    saved, now = ckpt.config.to_dict(), cfg.to_dict()
    for key in sorted(set(saved) | set(now)):
        if key not in RESUMABLE_KEYS and saved.get(key) != now.get(key):
            raise ConfigError(f"{ckpt.folder}: checkpoint was trained with a different {key!r} "
                              f"({saved.get(key)!r}, now {now.get(key)!r})")


def prepare_run_dir(out: Path, cfg: TrainConfig, resume: bool) -> Checkpoint | None:
    """Check the run folder, then (rank 0) write the resolved config; return the checkpoint to resume from."""
    out = Path(out)
    ckpt = None
    if not resume and ((out / "config.json").exists() or list_checkpoints(out)):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and list_checkpoints(out):  # a run stopped before its first checkpoint starts afresh
        ckpt = read_checkpoint(out)
        check_resumable(cfg, ckpt)
    dist.barrier()  # every process has looked at the folder before rank 0 writes to it
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_json(cfg.to_dict(), out / "config.json")
    return ckpt


# ----------------------------------------------------------------------------- the loop

def initial_weights(spec: str) -> tuple[dict[str, Tensor], dict, float | None]:
    """(EMA weights, network config, residual_sigma) of a run or checkpoint folder, or of a shipped model,
    resolved as ``diffiqt enhance --model`` resolves it: what a fine-tuning run (``init_from``) starts from."""
    from diffiqt.enhance import load_model

    model = load_model(spec)
    return model.net.state_dict(), stored_config(model.net), model.residual_sigma


def stored_config(net: Network) -> dict:
    """A network's config as checkpoints and cards store it (JSON: tuples become lists)."""
    return json.loads(json.dumps(dict(net.config)))


def check_initial(cfg: TrainConfig, net: Network, network: dict, residual_sigma: float | None) -> None:
    """The run must build the same model as the one it starts from: same weights' shapes, same settings
    (e.g. condition_skip, which changes no shape), same Denoiser preconditioning."""
    mine = stored_config(net)
    if mine != network:
        key = sorted(k for k in set(mine) | set(network) if mine.get(k) != network.get(k))[0]
        raise ConfigError(f"init_from {cfg.init_from}: its network has {key}={network.get(key)!r}, this run's "
                          f"{mine.get(key)!r}; set network.name/overrides to match")
    if residual_sigma != cfg.diffusion.residual_sigma:
        raise ConfigError(f"init_from {cfg.init_from}: it was trained with diffusion.residual_sigma={residual_sigma}, "
                          f"this run has {cfg.diffusion.residual_sigma}")


class Trainer:
    """State of one training process: network, EMA, optimizer, data, logs."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool, progress: bool):
        self.cfg, self.out, self.show_progress = validate(cfg), Path(out), progress
        self.device = resolve_device(cfg.device)
        dist.init(self.device.type)
        self.rank, self.world = dist.rank(), dist.world_size()
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.net = build_network({"name": cfg.network.name, **cfg.network.overrides}).to(self.device)
        if not any(p.requires_grad for p in self.net.parameters()):
            raise ConfigError(f"network {cfg.network.name!r} has no trainable weights; nothing to train")
        self.layout = resolve_layout(self.net, cfg)
        # Data problems surface before the run folder is created, so a corrected command can reuse --out.
        self.data_origin: dict = {}
        train: list[Pair] | list[BrainSample]  # pre-simulated pairs, or brains to simulate pairs from
        self.val_blocks: dict[str, Tensor] | None  # None on ranks other than 0 when simulating
        if cfg.data.pairs_file:
            stored = read_pairs_file(cfg.data.pairs_file, cfg.data.block_size)
            train, self.val_blocks, self.voxel_mm = stored.pairs, stored.validation, stored.voxel_mm
            self.data_origin = {"pairs_file": {"path": cfg.data.pairs_file, **stored.meta}}
        else:
            train, val = training_and_validation(cfg.data)
            self.voxel_mm = model_voxel_mm(train)
            self.val_blocks = validation_blocks(val, cfg.data, cfg.seed) if self.rank == 0 else None
        self.val: dict = {}
        initial = None
        if cfg.init_from:
            initial, network, residual_sigma = initial_weights(cfg.init_from)
            check_initial(cfg, self.net, network, residual_sigma)
            check_fits(self.net, initial, cfg.init_from)
        ckpt = prepare_run_dir(self.out, cfg, resume)
        if ckpt is None and initial is not None:
            self.net.load_state_dict(initial)
        self.ema = EMA(self.net, cfg.optim.ema_decay)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.betas[0], cfg.optim.betas[1]),
                                           weight_decay=cfg.optim.weight_decay)
        self.step = 0
        self.last_checkpoint: Path | None = None
        if ckpt is not None:
            self._restore(ckpt)
        self.model = self._wrap_ddp()
        shard = train[self.rank::self.world] if len(train) >= self.world else train
        stream: Callable[..., BlockStream] = StoredPairStream if cfg.data.pairs_file else BlockStream
        self.stream = stream(shard, cfg.data, cfg.batch_size, cfg.seed, self.rank, start_batch=self.step)

    def _restore(self, ckpt: Checkpoint) -> None:
        load_weights(self.net, ckpt.folder / "model.safetensors")
        load_weights(self.ema.module, ckpt.folder / "ema.safetensors")
        groups = ckpt.meta.get("optimizer", {}).get("param_groups")
        if groups is None:
            raise ConfigError(f"{ckpt.folder}: no optimizer state; it cannot be resumed")
        restore_optimizer(self.optimizer, read_tensors(ckpt.folder / "optimizer.safetensors"), groups)
        self.step, self.last_checkpoint = ckpt.step, ckpt.folder

    def _wrap_ddp(self) -> nn.Module:
        if self.world == 1:
            return self.net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.net, device_ids=ids)

    def train_step(self, batch: dict) -> tuple[float, float]:
        """One optimizer step; returns (loss, gradient norm before clipping)."""
        torch.manual_seed(step_seed(self.cfg.seed, self.rank, self.step))
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        self.model.train()
        with autocast(self.device, self.cfg):
            loss = batch_loss(self.model, self.net.needs_time, batch, self.layout, self.cfg.diffusion)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.optim.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.net, self.step)
        return float(loss.detach()), float(grad_norm)

    def checkpoint(self) -> None:
        if self.rank == 0:
            meta = {"network": dict(self.net.config),
                    "train": self.cfg.to_dict(), "normalisation": NORMALISATION,
                    "rng": {"scheme": "counter-based: torch.manual_seed(seed, rank, step)", "seed": self.cfg.seed},
                    "voxel_mm": self.voxel_mm, "world_size": self.world, "metrics": self.val, **self.data_origin}
            self.last_checkpoint = save_checkpoint(self.out, self.step, meta, self.net, self.ema.module, self.optimizer)
            prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        dist.barrier()

    def validate(self) -> None:
        if self.rank == 0 and self.val_blocks is not None:  # rank 0 validates and always has its blocks
            self.val = {"step": self.step, **validate_blocks(self.ema.module, self.val_blocks, self.cfg, self.layout, self.device)}
        dist.barrier()

    def run(self) -> TrainResult:
        logs = Logs(self.out, self.cfg, self.step) if self.rank == 0 else None
        try:
            self._loop(logs)
        except KeyboardInterrupt:
            where = f"step {self.step}"
            saved = f"last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
            raise TrainingInterrupted(f"training interrupted at {where}; {saved} (continue with --resume)") from None
        finally:
            if logs is not None:
                logs.close()
        return TrainResult(self.out, self.step, self.last_checkpoint, self.val)

    def _loop(self, logs: Logs | None) -> None:
        cfg = self.cfg
        batches = iter(make_loader(self.stream))
        with ProgressBar(cfg.steps, self.step, enabled=self.show_progress and self.rank == 0) as bar:
            window = Window()
            while self.step < cfg.steps:
                loss, grad_norm = self.train_step(next(batches))
                window.add(loss, cfg.batch_size * self.world)
                bar.update(self.step, loss, window.rate())
                last = self.step == cfg.steps or self._out_of_time(bar.elapsed())
                if self.step % cfg.log_every == 0 or last:
                    row = {"step": self.step, "loss": dist.mean_over_ranks(window.mean_loss(), self.device),
                           "grad_norm": grad_norm, "lr": learning_rate(cfg, self.step - 1),
                           "examples_per_s": window.rate(), "elapsed_s": bar.elapsed()}
                    window = Window()
                    if logs is not None:
                        logs.train(row)
                if self.step % cfg.val_every == 0 or last:
                    self.validate()
                    if logs is not None:
                        logs.validation(self.val)
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.checkpoint()
                if last:
                    break

    def _out_of_time(self, elapsed_s: float) -> bool:
        """Has the loop run for ``max_minutes``? Any rank's clock decides, so that all ranks stop at one step."""
        if self.cfg.max_minutes is None:
            return False
        return dist.mean_over_ranks(float(elapsed_s >= 60.0 * self.cfg.max_minutes), self.device) > 0


class Window:
    """Loss and throughput since the last log line."""

    def __init__(self):
        self.start, self.losses, self.examples = time.perf_counter(), [], 0

    def add(self, loss: float, examples: int) -> None:
        self.losses.append(loss)
        self.examples += examples

    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def rate(self) -> float:
        return self.examples / max(time.perf_counter() - self.start, 1e-9)


class Logs:
    """train.csv, val.csv and (optionally) TensorBoard in the run folder (rank 0 only)."""

    def __init__(self, out: Path, cfg: TrainConfig, resume_step: int):
        resume = resume_step if resume_step > 0 else None
        self.train_csv = CsvLog(out / "train.csv", ["step", "loss", "grad_norm", "lr", "examples_per_s", "elapsed_s"], resume)
        self.val_csv = CsvLog(out / "val.csv", ["step", "val_loss", "val_psnr", "val_psnr_interp"], resume)
        self.board = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard = true needs the tensorboard package (pip install tensorboard)") from None
            self.board = SummaryWriter(str(out / "tensorboard"), purge_step=resume)

    def train(self, row: dict) -> None:
        self.train_csv.write(row)
        self._board(row, ["loss", "grad_norm", "lr", "examples_per_s"])

    def validation(self, row: dict) -> None:
        self.val_csv.write(row)
        self._board(row, ["val_loss", "val_psnr", "val_psnr_interp"])

    def _board(self, row: dict, keys: list[str]) -> None:
        if self.board is not None:
            for key in keys:
                self.board.add_scalar(key, row[key], row["step"])

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class ProgressBar:
    """A rich progress bar on stderr with loss and examples/s (a no-op when disabled)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.start = time.perf_counter()
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4g}  {task.fields[rate]:.2f} ex/s"),
                                     console=Console(stderr=True))
            self.task = self.progress.add_task("training", total=total, completed=done, loss=float("nan"), rate=0.0)

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, rate=rate)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``out``; returns where it stopped."""
    try:
        return Trainer(cfg, Path(out), resume, progress).run()
    finally:
        dist.close()


# ----------------------------------------------------------------------------- linear IQT: least squares, not gradients

def integral_factor(cfg: DataConfig) -> int:
    """round(cfg.lf_factor), which must be a whole number of voxels (the slice phases must repeat)."""
    factor = int(round(cfg.lf_factor))
    if factor < 1 or abs(cfg.lf_factor - factor) > 1e-6:
        raise ConfigError(f"linear IQT needs a whole-voxel slice step; data.lf_factor is {cfg.lf_factor}")
    return factor


def slice_last_pair(samples: list[BrainSample], cfg: DataConfig, seed_words: list[int], axis: int):
    """One simulated pair (:func:`diffiqt.data.make_pair`, augmented if ``cfg`` says so) at slice axis ``axis``,
    turned so that the slice axis is last: (cond, target, mask), each [X, Y, Z].

    The simulator keeps HF slice 0 of the (trimmed) source along the axis as its first thick slice, so the
    thick-slice centres are at Z = 0, f, 2f, ... with no crop; padding (to a block) only happens at the far end.
    """
    # One fixed factor (the filter is per phase of that factor); the arrays are turned here, not by the pair.
    pair = make_pair(samples, replace(cfg, lf_axis=axis, lf_factors=[], slice_block=None), seed_words)
    return tuple(np.moveaxis(a, axis, -1) for a in (pair.cond, pair.target, pair.mask))


def fit_linear_iqt(samples: list[BrainSample], cfg: DataConfig, pairs: int, seed: int, *, radius: int = 2,
                   before: int = 1, after: int = 2, max_voxels: int | None = 400_000) -> LinearIQT:
    """Fit a :class:`LinearIQT` on ``pairs`` pairs simulated from ``samples`` with ``cfg`` (augmentation, SNR
    draws and the slice axis as configured; a random axis per pair when ``cfg.lf_axis`` is None).

    At most ``max_voxels`` random low-field voxels of each pair enter the normal equations. The returned net
    carries ``fit_info`` (pairs, voxels, axes, seconds).
    """
    if pairs < 1:
        raise ConfigError(f"linear IQT needs at least one training pair (got {pairs})")
    factor = integral_factor(cfg)
    axis_rng = np.random.default_rng([seed, LINEAR_IQT_STREAM])
    axes = [cfg.lf_axis if cfg.lf_axis is not None else int(axis_rng.integers(3)) for _ in range(pairs)]
    simulated = (slice_last_pair(samples, cfg, [seed, LINEAR_IQT_STREAM, index], axis) for index, axis in enumerate(axes))
    started = time.perf_counter()
    net = LinearIQT.fit(simulated, factor, radius, before, after, max_voxels, seed=[seed, LINEAR_IQT_STREAM, 1])
    net.fit_info.update(axes=axes, seconds=time.perf_counter() - started)
    return net
