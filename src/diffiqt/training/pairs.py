"""Training data: (HF target, LF condition) pairs, cut into blocks, streamed reproducibly.

Pipeline for one pair (:func:`make_pair`): a source brain (trimmed to its head
plus a margin) -> torchio augmentation of the HF image and its tissue maps
(random affine, sometimes an elastic deformation, bias field, gamma) -> the
low-field simulator (:func:`diffiqt.simulation.simulate_low_field`, a fresh SNR
draw each time) -> LF resampled (cubic) onto the HF grid (for a network on the
low-field grid at a factor other than its fold: both onto the fold's grid, see
:func:`simulate_pair`) -> both normalised by
the LF's robust intensity (:func:`~diffiqt.preprocess.lf_scale`). Spatial and intensity
augmentation happen before simulation, so HF and LF always match.

A pair costs several seconds (simulation ~4 s on a trimmed 1 mm brain, torchio
~3 s, ~10 s more when the elastic deformation is drawn), far more than a
training step. Each data worker therefore keeps a pool of ``pool_size`` pairs,
cuts every block of a batch from a randomly chosen pooled pair, and replaces
one pooled pair by a fresh simulation every ``refresh_every`` batches.

Reproducibility: every random draw comes from a generator seeded by
(seed, rank, what, index) -- the batch index for block positions, the pair's
serial number for augmentation and simulation -- never from a running state.
Batch ``b`` of rank ``r`` is therefore the same whether the run started at 0 or
resumed at ``b``, for a given ``num_workers`` (each worker owns the "lane" of
batches b = lane (mod num_workers) and its own pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from diffiqt.anatomy.brains import BrainSample, TissueMaps, crop_sample, held_out_identity, load_sources
from diffiqt.config import AugmentConfig, DataConfig
from diffiqt.errors import ConfigError
from diffiqt.imaging.resample import mask_extent, resample, to_isotropic
from diffiqt.preprocess import foreground, lf_scale, normalise

HEAD_MARGIN = 8  # voxels kept around the head when trimming a source

# Stream identifiers that keep the seeds of different kinds of draw apart.
_PAIR, _BLOCKS, _VALIDATION = 1, 2, 3


# ----------------------------------------------------------------------------- sources


def checked_sources(spec: str) -> list[BrainSample]:
    """The brains of one training or validation source, none of them a test brain (else an InputError)."""
    identity = held_out_identity()
    identity.check(spec)  # before loading: a named test file or folder is refused at once
    samples = load_sources([spec])
    for sample in samples:
        identity.check(spec, sample)
    return samples


def trim_to_head(sample: BrainSample, margin: int = HEAD_MARGIN) -> BrainSample:
    """Crop to the mask's bounding box plus ``margin`` voxels: less work per simulation."""
    if not sample.mask.any():
        raise ConfigError(f"{sample.name}: the head mask is empty")
    lower, upper = mask_extent(sample.mask)
    return crop_sample(sample, lower - margin, upper + margin)


def split_anterior(sample: BrainSample, fraction: float, block: int) -> tuple[BrainSample, BrainSample]:
    """(train, validation): the anterior slab (+y in RAS) of the head is held out.

    The slab spans ``fraction`` of the head's A-P extent, and at least one block.
    """
    ys = np.flatnonzero(sample.mask.any(axis=(0, 2)))
    held = max(block, int(round(fraction * (ys[-1] + 1 - ys[0]))))
    cut = ys[-1] + 1 - held
    if cut < block:
        raise ConfigError(
            f"{sample.name} is too small to hold out a {held}-voxel validation slab and keep "
            f"a {block}-voxel training block; give data.val_sources"
        )
    shape = sample.t1.shape
    return crop_sample(sample, (0, 0, 0), (shape[0], cut, shape[2])), crop_sample(sample, (0, cut, 0), shape)


def training_and_validation(cfg: DataConfig) -> tuple[list[BrainSample], list[BrainSample]]:
    """Load, crop and split the configured sources into training and validation brains.

    A test brain (:data:`diffiqt.anatomy.brains.TEST_BRAINS`: by name, file, folder or voxel data) is refused as either.
    """
    train = []
    for index, spec in enumerate(cfg.sources):
        brains = [cropped(s, cfg) for s in checked_sources(spec)]
        if cfg.source_weights:
            brains = [replace(b, weight=cfg.source_weights[index] / len(brains)) for b in brains]
        train += brains
    if cfg.val_sources:
        val = [cropped(s, cfg) for spec in cfg.val_sources for s in checked_sources(spec)]
    else:
        pairs = [split_anterior(s, cfg.holdout_fraction, cfg.block_size) for s in train]
        train, val = [p[0] for p in pairs], [p[1] for p in pairs]
    return [trim_to_head(s) for s in train], [trim_to_head(s) for s in val]


def cropped(sample: BrainSample, cfg: DataConfig) -> BrainSample:
    """``sample`` cut to ``cfg.crop`` (unchanged if none is set)."""
    if cfg.crop is None:
        return sample
    return crop_sample(sample, [r[0] for r in cfg.crop], [r[1] for r in cfg.crop])


def model_voxel_mm(samples: list[BrainSample]) -> float:
    """The model grid's voxel size, which enhancement resamples scans to: the median finest spacing of the training brains."""
    return float(np.median([s.t1.voxel_size.min() for s in samples]))


# ----------------------------------------------------------------------------- pairs


@dataclass
class Pair:
    """One normalised training pair on the HF grid, each dimension at least one block.

    ``target`` and ``cond`` are float32 [X, Y, Z] in normalised units; ``mask``
    (bool [X, Y, Z]) is the LF foreground, where block centres are drawn;
    ``scale`` is the :func:`~diffiqt.preprocess.lf_scale` used.
    """

    target: np.ndarray
    cond: np.ndarray
    mask: np.ndarray
    scale: float
    slice_step: float | None = None  # voxels between thick-slice centres along the last axis, if it is the slice axis
    _centres: np.ndarray | None = field(default=None, repr=False)

    def centres(self) -> np.ndarray:
        """Flat indices of the mask voxels (cached)."""
        if self._centres is None:
            self._centres = np.flatnonzero(self.mask)
        return self._centres


def augment(sample: BrainSample, cfg: AugmentConfig, seed: int) -> BrainSample:
    """A randomly deformed and re-shaded copy of ``sample`` (HF image and tissue maps alike).

    torchio draws its parameters from torch's global generator, which is seeded
    here and restored afterwards so that training randomness is untouched.
    """
    import torchio as tio

    images = {"t1": sample.t1.data}
    if sample.tissues is not None:
        images.update({k: v.data for k, v in sample.tissues.as_dict().items()})
    subject = tio.Subject(
        **{
            k: tio.ScalarImage(tensor=torch.from_numpy(v[None].copy()), affine=sample.t1.affine)
            for k, v in images.items()
        }
    )
    transform = tio.Compose(
        [
            tio.RandomAffine(scales=cfg.scales, degrees=cfg.degrees, default_pad_value=0.0),
            tio.RandomElasticDeformation(max_displacement=cfg.max_displacement_mm, p=cfg.elastic_probability),
            tio.RandomBiasField(coefficients=cfg.bias_coefficients, include=["t1"]),
            tio.RandomGamma(log_gamma=cfg.log_gamma, include=["t1"]),
        ]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = transform(subject).get_images_dict(intensity_only=False)
    data = {k: out[k].data[0].numpy() for k in images}
    tissues = None
    if sample.tissues is not None:
        tissues = TissueMaps(
            **{k: v.with_data(np.clip(data[k], 0.0, 1.0)) for k, v in sample.tissues.as_dict().items()}
        )
    return replace(sample, t1=sample.t1.with_data(np.maximum(data["t1"], 0.0)), tissues=tissues)


def block_shape(cfg: DataConfig) -> tuple[int, int, int]:
    """Voxels of one training block per axis: a cube, or block_size² x slice_block with the slice axis last."""
    size = cfg.block_size
    return (size, size, cfg.slice_block if cfg.slice_block is not None else size)


def simulate_pair(sample: BrainSample, cfg: DataConfig, rng: np.random.Generator) -> Pair:
    """Simulate the LF of ``sample`` onto its grid and normalise both (no augmentation here).

    With ``cfg.slice_block`` the pair is turned so that its slice axis is last (what a network on the
    low-field grid folds) and remembers where its thick slices lie. Such a network always gets
    ``cfg.lf_factor`` voxels (its fold) per thick slice, as enhancement gives it
    (:func:`diffiqt.inference.enhance.model_grid_mm`): a pair drawn at another factor from
    ``cfg.lf_factors`` is resampled along the slice axis onto that grid, the scan with cubic splines as
    enhancement does and the truth likewise, so that x5 of 1 mm trains on 0.625 mm voxels, anatomy
    stretched 1.6 times, with its thick slices on the fold's phase 0. With ``cfg.inplane_mm`` the scan is
    simulated at a coarser in-plane voxel and resampled (cubic) onto the truth's in-plane grid, as
    enhancement resamples such a scan to 1 mm.
    """
    from diffiqt.simulation import LowFieldParams, simulate_low_field

    axis = cfg.lf_axis if cfg.lf_axis is not None else int(rng.integers(3))
    factor = float(rng.choice(cfg.lf_factors)) if cfg.lf_factors else cfg.lf_factor
    inplane_mm = float(rng.uniform(cfg.inplane_mm[0], cfg.inplane_mm[1])) if cfg.inplane_mm else None
    voxel_mm = float(sample.t1.voxel_size[axis])
    params = LowFieldParams.for_factor(
        factor, voxel_mm, axis=axis, snr_wm=cfg.snr_wm, snr_gm=cfg.snr_gm, inplane_mm=inplane_mm
    )
    stretch = cfg.slice_block is not None and abs(factor - cfg.lf_factor) > 1e-6
    result = simulate_low_field(sample.t1, sample.tissues, params, rng, upsample=not stretch)
    if stretch:
        grid_mm = sample.t1.voxel_size.astype(float)
        grid_mm[axis] = params.spacing_mm / cfg.lf_factor
        lf_volume = to_isotropic(result.lf, grid_mm)  # thick slice k on voxel k * lf_factor
        hf = resample(sample.t1, lf_volume.affine, lf_volume.shape).data
        lf = lf_volume.data
    else:
        assert result.lf_on_hf is not None  # upsample=True resamples the scan onto the HF grid
        hf, lf = sample.t1.data, result.lf_on_hf.data
    scale = lf_scale(lf)
    arrays = [normalise(hf, scale), normalise(lf, scale), foreground(lf)]
    slice_step = None
    if cfg.slice_block is not None:
        arrays = [np.moveaxis(a, axis, -1) for a in arrays]
        slice_step = cfg.lf_factor  # unstretched, the factor drawn is lf_factor itself
    shape = block_shape(cfg)
    return Pair(
        target=_pad_to(arrays[0], shape, 0.0),
        cond=_pad_to(arrays[1], shape, 0.0),
        mask=_pad_to(arrays[2], shape, False),
        scale=scale,
        slice_step=slice_step,
    )


def _pad_to(array: np.ndarray, shape: tuple[int, ...], value) -> np.ndarray:
    """Pad at the end of each axis so that every dimension is at least ``shape``'s."""
    pad = [(0, max(0, size - n)) for n, size in zip(array.shape, shape)]
    return np.pad(array, pad, constant_values=value) if any(p[1] for p in pad) else array


def make_pair(samples: list[BrainSample], cfg: DataConfig, seed_words: list[int]) -> Pair:
    """A fresh pair: a random source, augmented (if enabled), simulated; all draws from ``seed_words``."""
    seeds = np.random.SeedSequence(seed_words)
    rng = np.random.default_rng(seeds)
    weights = np.array([s.weight for s in samples])
    if np.all(weights == 1.0):
        sample = samples[int(rng.integers(len(samples)))]
    else:
        sample = samples[int(rng.choice(len(samples), p=weights / weights.sum()))]
    if cfg.augment.enabled:
        sample = augment(sample, cfg.augment, int(seeds.generate_state(1, np.uint64)[0] >> 1))
    return simulate_pair(sample, cfg, rng)


def cut_block(pair: Pair, lower, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target, cond, mask), each of ``shape``, with corner ``lower``."""
    box = tuple(slice(int(a), int(a) + n) for a, n in zip(lower, shape))
    return pair.target[box], pair.cond[box], pair.mask[box]


def random_corner(pair: Pair, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Corner of a block centred on a random head voxel, shifted to lie inside the volume.

    If the pair knows its thick slices, the corner moves back onto the nearest slice centre along the
    last axis, as enhancement aligns its box: every block then shows the network the same slice phases.
    """
    size = np.array(shape)
    centre = np.array(np.unravel_index(rng.choice(pair.centres()), pair.mask.shape))
    corner = np.clip(centre - size // 2, 0, np.array(pair.mask.shape) - size)
    if pair.slice_step is not None:
        corner[-1] = int(round(np.floor(corner[-1] / pair.slice_step + 1e-9) * pair.slice_step))
    return corner


# ----------------------------------------------------------------------------- streaming


def pooled_pair_serial(slot: int, refreshes: int, pool_size: int) -> int:
    """Serial number of the pair in ``slot`` after ``refreshes`` round-robin replacements.

    Pairs 0..P-1 fill the pool first; refresh m (1-based) puts pair P+m-1 into slot (m-1) mod P.
    """
    return slot + pool_size * ((pool_size + refreshes - 1 - slot) // pool_size)


class BlockStream(IterableDataset):
    """An endless stream of batches {"target", "cond"}: float32 [B, 1, S, S, S] (S = block size).

    Batch ``b`` (counting from 0 at the run's start) depends only on (seed,
    rank, b, num_workers); ``start_batch`` resumes the stream exactly.
    """

    def __init__(
        self,
        samples: list[BrainSample],
        cfg: DataConfig,
        batch_size: int,
        seed: int,
        rank: int = 0,
        start_batch: int = 0,
    ):
        self.samples, self.cfg, self.batch_size = samples, cfg, batch_size
        self.seed, self.rank, self.start_batch = seed, rank, start_batch
        self.lanes = max(1, cfg.num_workers)

    def __iter__(self):
        info = get_worker_info()
        batch = self.start_batch + (info.id if info is not None else 0)
        lane = batch % self.lanes
        pool: dict[int, tuple[int, Pair]] = {}
        while True:
            yield self._batch(batch, lane, pool)
            batch += self.lanes

    def _batch(self, batch: int, lane: int, pool: dict) -> dict[str, torch.Tensor]:
        refreshes = (batch // self.lanes) // self.cfg.refresh_every
        rng = np.random.default_rng([self.seed, self.rank, _BLOCKS, batch])
        blocks = []
        for _ in range(self.batch_size):
            slot = int(rng.integers(self.cfg.pool_size))
            pair = self._pooled(pool, lane, slot, pooled_pair_serial(slot, refreshes, self.cfg.pool_size))
            shape = block_shape(self.cfg)
            blocks.append(cut_block(pair, random_corner(pair, shape, rng), shape))
        return {
            "target": torch.from_numpy(np.stack([b[0] for b in blocks])[:, None].copy()),
            "cond": torch.from_numpy(np.stack([b[1] for b in blocks])[:, None].copy()),
        }

    def _pooled(self, pool: dict, lane: int, slot: int, serial: int) -> Pair:
        """The pair in ``slot``, simulated now if the slot is empty or holds an older pair."""
        if slot not in pool or pool[slot][0] != serial:
            pool[slot] = (serial, make_pair(self.samples, self.cfg, [self.seed, self.rank, _PAIR, lane, serial]))
        return pool[slot][1]


class StoredPairStream(BlockStream):
    """:class:`BlockStream`'s batches, lanes and seeding, with blocks cut from pairs held in memory.

    The pairs were simulated beforehand (:mod:`diffiqt.training.presimulated`), so nothing is
    simulated or augmented here except this: each block is mirrored left-right with
    probability 1/2. A mirrored brain is still a plausible brain and the simulator is
    mirror-symmetric, so this doubles the distinct blocks of a small file for free;
    other flips would show orientations that enhancement (RAS+ inputs) never meets.
    """

    def __init__(
        self, pairs: list[Pair], cfg: DataConfig, batch_size: int, seed: int, rank: int = 0, start_batch: int = 0
    ):
        super().__init__([], cfg, batch_size, seed, rank, start_batch)
        self.pairs = pairs

    def _batch(self, batch: int, lane: int, pool: dict) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, _BLOCKS, batch])
        targets, conds = [], []
        for _ in range(self.batch_size):
            pair = self.pairs[int(rng.integers(len(self.pairs)))]
            shape = block_shape(self.cfg)
            target, cond, _ = cut_block(pair, random_corner(pair, shape, rng), shape)
            mirror = slice(None, None, -1 if rng.random() < 0.5 else 1)  # axis 0 of RAS+ runs left to right
            targets.append(target[mirror])
            conds.append(cond[mirror])
        return {
            "target": torch.from_numpy(np.stack(targets)[:, None].copy()),
            "cond": torch.from_numpy(np.stack(conds)[:, None].copy()),
        }


def make_loader(stream: BlockStream) -> DataLoader:
    """A DataLoader over ``stream`` with its configured workers (batches are built by the stream)."""
    workers = stream.cfg.num_workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        worker_init_fn=_ignore_stop_signals if workers else None,
    )


def _ignore_stop_signals(worker: int) -> None:
    """Ctrl-C reaches the workers too; they leave stopping to the training process, which stops at a step's end
    (a worker that quit at once would make the training process fail on its next batch)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def validation_blocks(samples: list[BrainSample], cfg: DataConfig, seed: int) -> dict[str, torch.Tensor]:
    """Fixed held-out blocks {"target", "cond", "mask"}: [N, 1, S, S, S] (mask bool).

    Each validation brain is simulated once (no augmentation, seeded) and
    ``val_blocks`` blocks are cut around random head voxels. Always at ``cfg.lf_factor`` and the brain's own
    in-plane voxel, whatever spread of factors and voxels training draws from, so that the curves of runs
    with different spreads (and of a run and the one it continues) score the same blocks.
    """
    cfg = replace(cfg, lf_factors=[], inplane_mm=[])
    blocks = []
    for index, sample in enumerate(samples):
        rng = np.random.default_rng([seed, _VALIDATION, index])
        pair = simulate_pair(sample, cfg, rng)
        shape = block_shape(cfg)
        blocks += [cut_block(pair, random_corner(pair, shape, rng), shape) for _ in range(cfg.val_blocks)]
    stacked = [np.stack([b[i] for b in blocks])[:, None].copy() for i in range(3)]
    return {
        "target": torch.from_numpy(stacked[0]),
        "cond": torch.from_numpy(stacked[1]),
        "mask": torch.from_numpy(stacked[2]),
    }
