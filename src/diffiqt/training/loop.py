"""The training loop: diffusion models (paper's Algorithm 1) and supervised baselines alike.

One process per device (``torchrun`` for several; see :mod:`diffiqt.training.distributed`).
Each step draws ``batch_size`` blocks per process from :class:`diffiqt.training.pairs.BlockStream`,
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
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffiqt.anatomy.brains import BrainSample
from diffiqt.config import (
    DataConfig,
    DiffusionConfig,
    TrainConfig,
    from_dict,
    merge,
    parse_assignment,
    read_file,
    validate,
)
from diffiqt.diffusion import SAMPLERS, Denoiser, diffusion_loss, reconstruction_loss
from diffiqt.errors import ConfigError, DiffiqtError, InputError, OutputError
from diffiqt.imaging.io import check_folder, save_json
from diffiqt.models.checkpoint import (
    Checkpoint,
    check_finite,
    check_fits,
    list_checkpoints,
    network_from_config,
    prune_checkpoints,
    read_checkpoint,
    read_tensors,
    restore_optimizer,
    save_checkpoint,
)
from diffiqt.nets.base import Network
from diffiqt.nets.linear_iqt import LinearIQT
from diffiqt.preprocess import FOREGROUND_FRACTION, SCALE_PERCENTILE
from diffiqt.training import distributed as dist
from diffiqt.training.distributed import resolve_device
from diffiqt.training.pairs import (
    BlockStream,
    Pair,
    StoredPairStream,
    make_loader,
    make_pair,
    model_voxel_mm,
    training_and_validation,
    validation_blocks,
)
from diffiqt.training.presimulated import read_pairs_file

PATCHES_PER_BLOCK = 27  # the 3x3x3 grid of the cross-batch mechanism
LINEAR_IQT_STREAM = 7  # keeps the seeds of fit_linear_iqt's pairs apart from other streams
# Keys a resumed run may change: none of them alters what is computed.
RESUMABLE_KEYS = {
    "steps",
    "max_minutes",
    "device",
    "log_every",
    "val_every",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
}
LOGS = ("train.csv", "val.csv")
LOCK_FILE = ".lock"  # in the run folder: held (flock) by the process training there
# Bytes per voxel of a training block that a step needs at the least (target, condition, mask, noise, the noisy
# input, the prediction and their gradients, as float32): the floor of an estimate, whatever the network.
MIN_BYTES_PER_VOXEL = 48
NORMALISATION = {
    "method": "lf-percentile",
    "map": "x / scale",
    "percentile": SCALE_PERCENTILE,
    "foreground": f"lf > {FOREGROUND_FRACTION} * percentile(lf, 99.5)",
}


class TrainingInterrupted(DiffiqtError):
    """Training was stopped (Ctrl-C, SIGTERM) before it finished."""


class TrainingDiverged(DiffiqtError):
    """The loss or the gradient became NaN or infinite: the step is not taken and the run stops."""


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
    if fold > 1 and (
        cfg.data.slice_block is None
        or cfg.data.slice_block % (fold * net.patch_size)
        or cfg.data.block_size % net.patch_size
    ):
        raise ConfigError(
            f"a network with slice_fold {fold} trains on blocks with the slice axis last: set "
            f"data.slice_block to a multiple of {fold * net.patch_size} and data.block_size to a "
            f"multiple of {net.patch_size}"
        )
    if fold > 1 and abs(cfg.data.lf_factor - fold) > 1e-6:
        raise ConfigError(
            f"a network with slice_fold {fold} sees {fold} voxels per thick slice, as enhancement gives it: "
            f"set data.lf_factor to {fold} (other spacings go in data.lf_factors)"
        )
    if fold == 1 and cfg.data.slice_block is not None:
        raise ConfigError("data.slice_block is for networks with slice_fold > 1; leave it null")
    if layout == "patches" and cfg.data.block_size != 3 * net.patch_size:
        raise ConfigError(
            f"data.block_size {cfg.data.block_size} must be 3 x the network's patch size "
            f"{net.patch_size} in the patch layout"
        )
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
    """A linear warm-up over ``optim.warmup_steps``, then constant or (``optim.decay``) a cosine to 0 at ``steps``."""
    warm = cfg.optim.warmup_steps
    if step < warm:
        return cfg.optim.lr * (step + 1) / warm
    if cfg.optim.decay == "cosine":
        progress = min(1.0, (step - warm) / max(1, cfg.steps - warm))
        return cfg.optim.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.optim.lr


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
    return diffusion_loss(
        Denoiser(model, diffusion.residual_sigma), target, cond, t, noise, diffusion.loss, layout=layout
    )


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
                out = sampler(
                    Denoiser(net, cfg.diffusion.residual_sigma),
                    net_cond,
                    cfg.diffusion.sample_steps,
                    generator,
                    layout=layout,
                )
            else:
                out = net(net_cond)
        predictions.append(from_layout(out.float(), layout).cpu())
    from diffiqt.evaluation import metrics

    target, mask = blocks["target"].numpy(), blocks["mask"].numpy()
    return {
        "val_loss": val_loss,
        "val_psnr": metrics.psnr(torch.cat(predictions).numpy(), target, 1.0, mask),
        "val_psnr_interp": metrics.psnr(blocks["cond"].numpy(), target, 1.0, mask),
    }


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 autocast on CUDA when enabled; never on CPU (where bf16 is very slow)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)


class CsvLog:
    """Append rows to a CSV file; on resume, rows after the resumed step are dropped first."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None):
        self.path, self.columns = path, columns
        rows = log_rows(path, resume_step) if resume_step is not None else []
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({k: _csv_value(row.get(k)) for k in self.columns})


def log_rows(path: Path, up_to_step: int) -> list[dict]:
    """The rows of a CSV log (none if it is missing) up to step ``up_to_step``; InputError if it is no such log."""
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            return [r for r in csv.DictReader(f) if int(r["step"]) <= up_to_step]
    except (ValueError, TypeError, KeyError, csv.Error, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a log this run can continue ({reason}); move it away to resume") from None


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
            raise ConfigError(
                f"{ckpt.folder}: checkpoint was trained with a different {key!r} "
                f"({saved.get(key)!r}, now {now.get(key)!r})"
            )


def check_run_folder(out: Path) -> None:
    """Before any work: ``out`` is a folder, or can be made one."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: not a folder; --out is the run folder")
    check_folder(out)


def check_batch_memory(cfg: TrainConfig) -> None:
    """Refuse a batch whose blocks alone would exceed this machine's memory (a slip like batch_size=100000
    would otherwise swap the machine to a halt before failing)."""
    side = cfg.data.block_size
    need = cfg.batch_size * side * side * (cfg.data.slice_block or side) * MIN_BYTES_PER_VOXEL
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > memory:
        raise ConfigError(
            f"batch_size {cfg.batch_size}: blocks of {side} voxels need at least {need / 1e9:.3g} GB a "
            f"step, more than this machine's {memory / 1e9:.3g} GB; lower batch_size or data.block_size"
        )


def lock_run_folder(out: Path):
    """An exclusive lock on ``out/.lock`` for as long as the returned file stays open (the pid of its holder is in
    the file). The system drops the lock when its process ends, however it ends, so a killed run blocks nothing."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(
            f"{out}: another process (pid {holder}) is training in this run folder; wait for it to "
            "stop, or stop it first"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def prepare_run_dir(out: Path, cfg: TrainConfig, resume: bool, net: Network):
    """Check and lock the run folder, then (rank 0) write the resolved config.

    Returns (the lock, to keep open while training; None on other ranks) and (the checkpoint to resume from
    and its tensors, or None).
    """
    out = Path(out)
    if not resume and ((out / "config.json").exists() or list_checkpoints(out)):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    try:
        lock = lock_run_folder(out) if dist.is_main() else None
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the run folder ({exc.strerror or exc})") from None
    try:
        # A run stopped before its first checkpoint starts afresh.
        resume_from = newest_sound_checkpoint(out, cfg, net) if resume and list_checkpoints(out) else None
        for log in LOGS:  # read before anything is written, so that a refused resume changes nothing
            log_rows(out / log, resume_from[0].step if resume_from else 0)
        dist.barrier()  # every process has looked at the folder before rank 0 writes to it
        if dist.is_main():
            save_json(cfg.to_dict(), out / "config.json")
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    return lock, resume_from


def newest_sound_checkpoint(out: Path, cfg: TrainConfig, net: Network) -> tuple[Checkpoint, dict]:
    """The newest checkpoint of ``out`` that reads back whole, and its tensors ({"model", "ema", "optimizer"}).

    A corrupt newer one (a disk error, a copy cut short) is passed over with a one-line warning; if none is
    sound, the newest one's error is raised. A checkpoint of other settings is an error, never passed over.
    """
    errors = []
    for folder in reversed(list_checkpoints(out)):
        try:
            ckpt = read_checkpoint(folder)
            check_resumable(cfg, ckpt)
            tensors = {name: read_tensors(folder / f"{name}.safetensors") for name in ("model", "ema", "optimizer")}
            for name in ("model", "ema"):
                check_fits(net, tensors[name], str(folder / f"{name}.safetensors"))
            for name, found in tensors.items():
                check_finite(found, str(folder / f"{name}.safetensors"))
        except InputError as exc:
            errors.append(exc)
            continue
        if errors and dist.is_main():
            print(
                f"diffiqt: warning: {errors[0]}; resuming from the previous sound checkpoint, {folder.name}",
                file=sys.stderr,
            )
        return ckpt, tensors
    raise errors[0]


# ----------------------------------------------------------------------------- the loop


def initial_weights(spec: str) -> tuple[dict[str, Tensor], dict, float | None]:
    """(EMA weights, network config, residual_sigma) of a run or checkpoint folder, or of a shipped model,
    resolved as ``diffiqt enhance --model`` resolves it: what a fine-tuning run (``init_from``) starts from."""
    from diffiqt.models.loading import load_model

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
        raise ConfigError(
            f"init_from {cfg.init_from}: its network has {key}={network.get(key)!r}, this run's "
            f"{mine.get(key)!r}; set network.name/overrides to match"
        )
    if residual_sigma != cfg.diffusion.residual_sigma:
        raise ConfigError(
            f"init_from {cfg.init_from}: it was trained with diffusion.residual_sigma={residual_sigma}, "
            f"this run has {cfg.diffusion.residual_sigma}"
        )


class Trainer:
    """State of one training process: network, EMA, optimizer, data, logs."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool, progress: bool):
        self.cfg, self.out, self.show_progress = validate(cfg), Path(out), progress
        check_batch_memory(cfg)
        check_run_folder(self.out)
        self.device = resolve_device(cfg.device)
        dist.init(self.device.type)
        self.rank, self.world = dist.rank(), dist.world_size()
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.net = network_from_config({"name": cfg.network.name, **cfg.network.overrides}).to(self.device)
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
        self.lock, resume_from = prepare_run_dir(self.out, cfg, resume, self.net)
        try:
            self._start(train, initial, resume_from)
        except BaseException:
            self.close()
            raise

    def _start(self, train: list, initial: dict | None, resume_from: tuple[Checkpoint, dict] | None) -> None:
        """Weights (initial, or the checkpoint's), EMA, optimizer and data stream, at the step to start from."""
        cfg = self.cfg
        if resume_from is None and initial is not None:
            self.net.load_state_dict(initial)
        self.ema = EMA(self.net, cfg.optim.ema_decay)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=cfg.optim.lr,
            betas=(cfg.optim.betas[0], cfg.optim.betas[1]),
            weight_decay=cfg.optim.weight_decay,
        )
        self.step = 0
        self.last_checkpoint: Path | None = None
        if resume_from is not None:
            self._restore(*resume_from)
        self.model = self._wrap_ddp()
        shard = train[self.rank :: self.world] if len(train) >= self.world else train
        stream: Callable[..., BlockStream] = StoredPairStream if cfg.data.pairs_file else BlockStream
        self.stream = stream(shard, cfg.data, cfg.batch_size, cfg.seed, self.rank, start_batch=self.step)

    def _restore(self, ckpt: Checkpoint, tensors: dict) -> None:
        groups = ckpt.meta.get("optimizer", {}).get("param_groups")
        if groups is None:
            raise ConfigError(f"{ckpt.folder}: no optimizer state; it cannot be resumed")
        self.net.load_state_dict(tensors["model"])
        self.ema.module.load_state_dict(tensors["ema"])
        restore_optimizer(self.optimizer, tensors["optimizer"], groups)
        self.step, self.last_checkpoint = ckpt.step, ckpt.folder

    def close(self) -> None:
        """Release the run folder."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

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
        # A NaN step would make every weight NaN, and every later checkpoint with it: stop before taking it.
        finite = bool(torch.isfinite(loss.detach()) and torch.isfinite(grad_norm))
        if dist.mean_over_ranks(float(not finite), self.device) > 0:  # every rank stops at the same step
            saved = f"last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: the loss is {float(loss.detach()):.3g} and the "
                f"gradient norm {float(grad_norm):.3g}; the step was not taken and {saved} "
                f"(a lower optim.lr than {self.cfg.optim.lr:g}?)"
            )
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.net, self.step)
        return float(loss.detach()), float(grad_norm)

    def checkpoint(self) -> None:
        if self.rank == 0:
            meta = {
                "network": dict(self.net.config),
                "train": self.cfg.to_dict(),
                "normalisation": NORMALISATION,
                "rng": {"scheme": "counter-based: torch.manual_seed(seed, rank, step)", "seed": self.cfg.seed},
                "voxel_mm": self.voxel_mm,
                "world_size": self.world,
                "metrics": self.val,
                **self.data_origin,
            }
            self.last_checkpoint = save_checkpoint(self.out, self.step, meta, self.net, self.ema.module, self.optimizer)
            prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        dist.barrier()

    def validate(self) -> None:
        if self.rank == 0 and self.val_blocks is not None:  # rank 0 validates and always has its blocks
            self.val = {
                "step": self.step,
                **validate_blocks(self.ema.module, self.val_blocks, self.cfg, self.layout, self.device),
            }
        dist.barrier()

    def run(self) -> TrainResult:
        logs = Logs(self.out, self.cfg, self.step) if self.rank == 0 else None
        try:
            with StopSignals() as stop:
                self._loop(logs, stop)
        except KeyboardInterrupt:
            where = f"step {self.step}"
            saved = (
                f"last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
            )
            raise TrainingInterrupted(f"training interrupted at {where}; {saved} (continue with --resume)") from None
        finally:
            if logs is not None:
                logs.close()
        if stop.name is not None:
            raise TrainingInterrupted(
                f"training stopped by {stop.name} at step {self.step}; last checkpoint: "
                f"{self.last_checkpoint} (continue with --resume)"
            )
        return TrainResult(self.out, self.step, self.last_checkpoint, self.val)

    def _loop(self, logs: Logs | None, stop: StopSignals) -> None:
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
                    row = {
                        "step": self.step,
                        "loss": dist.mean_over_ranks(window.mean_loss(), self.device),
                        "grad_norm": grad_norm,
                        "lr": learning_rate(cfg, self.step - 1),
                        "examples_per_s": window.rate(),
                        "elapsed_s": bar.elapsed(),
                    }
                    window = Window()
                    if logs is not None:
                        logs.train(row)
                if self.step % cfg.val_every == 0 or last:
                    self.validate()
                    if logs is not None:
                        logs.validation(self.val)
                stopping = dist.mean_over_ranks(float(stop.name is not None), self.device) > 0
                if self.step % cfg.checkpoint_every == 0 or last or stopping:
                    self.checkpoint()
                if last or stopping:
                    break

    def _out_of_time(self, elapsed_s: float) -> bool:
        """Has the loop run for ``max_minutes``? Any rank's clock decides, so that all ranks stop at one step."""
        if self.cfg.max_minutes is None:
            return False
        return dist.mean_over_ranks(float(elapsed_s >= 60.0 * self.cfg.max_minutes), self.device) > 0


class StopSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM (what schedulers send) ask the loop to stop at the end of the
    current step, with a checkpoint; ``name`` is the first signal's name. A second signal stops at once.

    Stopping at a step boundary is what lets a busy step finish and its checkpoint be written; a
    KeyboardInterrupt raised anywhere inside a step could be lost in a data worker or library code.
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.name is not None:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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
        self.train_csv = CsvLog(
            out / LOGS[0], ["step", "loss", "grad_norm", "lr", "examples_per_s", "elapsed_s"], resume
        )
        self.val_csv = CsvLog(out / LOGS[1], ["step", "val_loss", "val_psnr", "val_psnr_interp"], resume)
        self.board = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "tensorboard = true needs the tensorboard package (pip install tensorboard)"
                ) from None
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
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]:.4g}  {task.fields[rate]:.2f} ex/s"),
                console=Console(stderr=True),
            )
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
    trainer = None
    try:
        trainer = Trainer(cfg, Path(out), resume, progress)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        dist.close()


# ----------------------------------------------------------------------------- linear IQT: least squares, not gradients


def integral_factor(cfg: DataConfig) -> int:
    """round(cfg.lf_factor), which must be a whole number of voxels (the slice phases must repeat)."""
    factor = int(round(cfg.lf_factor))
    if factor < 1 or abs(cfg.lf_factor - factor) > 1e-6:
        raise ConfigError(f"linear IQT needs a whole-voxel slice step; data.lf_factor is {cfg.lf_factor}")
    return factor


def slice_last_pair(samples: list[BrainSample], cfg: DataConfig, seed_words: list[int], axis: int):
    """One simulated pair (:func:`diffiqt.training.pairs.make_pair`, augmented if ``cfg`` says so) at slice axis ``axis``,
    turned so that the slice axis is last: (cond, target, mask), each [X, Y, Z].

    The simulator keeps HF slice 0 of the (trimmed) source along the axis as its first thick slice, so the
    thick-slice centres are at Z = 0, f, 2f, ... with no crop; padding (to a block) only happens at the far end.
    """
    # One fixed factor (the filter is per phase of that factor); the arrays are turned here, not by the pair.
    pair = make_pair(samples, replace(cfg, lf_axis=axis, lf_factors=[], slice_block=None), seed_words)
    return tuple(np.moveaxis(a, axis, -1) for a in (pair.cond, pair.target, pair.mask))


def fit_linear_iqt(
    samples: list[BrainSample],
    cfg: DataConfig,
    pairs: int,
    seed: int,
    *,
    radius: int = 2,
    before: int = 1,
    after: int = 2,
    max_voxels: int | None = 400_000,
) -> LinearIQT:
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
    simulated = (
        slice_last_pair(samples, cfg, [seed, LINEAR_IQT_STREAM, index], axis) for index, axis in enumerate(axes)
    )
    started = time.perf_counter()
    net = LinearIQT.fit(simulated, factor, radius, before, after, max_voxels, seed=[seed, LINEAR_IQT_STREAM, 1])
    net.fit_info.update(axes=axes, seconds=time.perf_counter() - started)
    return net
