"""Pre-simulated training pairs in one safetensors file, for training where the simulator cannot run.

A borrowed GPU machine may lack what simulation needs (torchio for augmentation,
nibabel and nilearn for the bundled brains, scikit-learn) and has little time to
spend on it. :func:`write_pairs_file` therefore runs the usual pipeline here -- a
training source, augmented, simulated with a fresh SNR draw
(:func:`diffiqt.training.pairs.make_pair`) -- crops each pair to its head and stores it; a
run with ``data.pairs_file`` reads the file with numpy, torch and safetensors
alone and cuts its blocks from the stored pairs (:class:`diffiqt.training.pairs.StoredPairStream`).

Layout (safetensors: nothing is pickled)::

    pairs.I.target, pairs.I.cond   float16 [X, Y, Z]        normalised HF target and LF condition (HF grid)
    pairs.I.mask                   uint8 [X, Y, ceil(Z/8)]  the LF head mask, bits packed along Z
    val.target, val.cond           float16 [N, S, S, S]     fixed validation blocks
    val.mask                       uint8 [N, S, S, ceil(S/8)]

and, under the header's metadata key ``diffiqt-pairs``, JSON: the format version,
diffiqt's version, the seed, the sources, the model grid's voxel size, the block
size, the data config used, and each pair's intensity scale and shape.

Size: an augmented pair of the MNI152 brain, cropped to the bounding box of its
head mask, has 4.1 to 4.8 M voxels (the random zoom), i.e. 17 to 20 MB at 4.1
bytes a voxel (float16 target and condition, one bit of mask). A pre-cut 96³
block costs 3.6 MB, so the same bytes would hold about ten fixed block positions
instead of every position of two augmented brains: whole pairs are stored.
``diffiqt simulate-pairs`` defaults to 2 pairs and 2 validation blocks: 44 MB
with the paper preset (measured), which fits the 64 MiB that may travel to a GPU
machine with the rest of the working tree.

Validation blocks are cut from a fresh, unaugmented simulation of each training
source with its own seeds (:func:`diffiqt.training.pairs.validation_blocks`): never trained
on, but the same anatomy, so they show progress and fit rather than
generalisation. ``data.val_sources`` is not used (and is recorded as empty): the
presets' validation brain, Colin27, is held out for the model card and must never
enter the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from diffiqt import __version__
from diffiqt.anatomy.brains import BrainSample
from diffiqt.anatomy.brains import load_sources
from diffiqt.config import DataConfig, TrainConfig
from diffiqt.errors import ConfigError, InputError
from diffiqt.imaging.io import atomic_write
from diffiqt.imaging.resample import mask_extent
from diffiqt.training.pairs import Pair, cropped, make_pair, model_voxel_mm, trim_to_head, validation_blocks

FORMAT = "diffiqt-pairs"  # the metadata key, and what marks a pairs file
VERSION = 1
HELD_OUT = ("colin27", "colin27-brain")  # bundled brains kept for the model card's held-out evaluation
PAIR_STREAM = 4  # seed-stream id of the file's pairs; diffiqt.training.pairs's streams use 1 to 3


@dataclass
class StoredPairs:
    """A pairs file in memory: pairs in float32 as training cuts them, validation blocks, metadata."""

    pairs: list[Pair]
    validation: dict[str, torch.Tensor]  # {"target", "cond", "mask"}: [N, 1, S, S, S] (mask bool)
    meta: dict

    @property
    def voxel_mm(self) -> float:
        return float(self.meta["voxel_mm"])


# ----------------------------------------------------------------------------- writing


def training_sources(cfg: DataConfig) -> list[BrainSample]:
    """The configured training brains, cropped and trimmed to the head; held-out brains are refused."""
    held = [spec for spec in cfg.sources if spec in HELD_OUT]
    if held:
        raise ConfigError(f"{held[0]} is held out for the model card's evaluation; it must not be in a pairs file")
    return [trim_to_head(cropped(s, cfg)) for s in load_sources(cfg.sources)]


def head_crop_box(mask: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """[lower, upper) of the mask's bounding box, grown inside the volume to at least one block.

    Outside it lies background only; blocks centred near its edge are shifted
    inwards, as they are at the edge of any volume.
    """
    lower, upper = mask_extent(mask)
    lower = np.minimum(lower, np.array(mask.shape) - block)
    return lower, np.maximum(upper, lower + block)


def crop_to_head(pair: Pair, block: int) -> Pair:
    box = tuple(slice(int(a), int(b)) for a, b in zip(*head_crop_box(pair.mask, block)))
    return Pair(pair.target[box], pair.cond[box], pair.mask[box], pair.scale)


def write_pairs_file(
    cfg: TrainConfig, path: str | Path, pairs: int, val_blocks: int, on_pair: Callable[[], None] | None = None
) -> dict:
    """Simulate ``pairs`` pairs and ``val_blocks`` validation blocks per source into ``path``; returns the metadata.

    Pair ``i`` is drawn from the seed words (``cfg.seed``, PAIR_STREAM, ``i``);
    ``on_pair`` is called after each pair (progress).
    """
    if pairs < 1 or val_blocks < 1:
        raise ConfigError("a pairs file needs at least one pair and one validation block")
    data_cfg = replace(cfg.data, val_sources=[], val_blocks=val_blocks)
    samples = training_sources(data_cfg)
    tensors, facts = {}, []
    for index in range(pairs):
        pair = crop_to_head(make_pair(samples, data_cfg, [cfg.seed, PAIR_STREAM, index]), data_cfg.block_size)
        tensors.update(_tensors(f"pairs.{index}", pair.target, pair.cond, pair.mask))
        facts.append({"scale": pair.scale, "shape": list(pair.target.shape)})
        if on_pair is not None:
            on_pair()
    val = {k: v[:, 0].numpy() for k, v in validation_blocks(samples, data_cfg, cfg.seed).items()}
    tensors.update(_tensors("val", val["target"], val["cond"], val["mask"]))
    meta = {
        "format_version": VERSION,
        "diffiqt_version": __version__,
        "seed": cfg.seed,
        "sources": [s.name for s in samples],
        "voxel_mm": model_voxel_mm(samples),
        "block_size": data_cfg.block_size,
        "data": asdict(data_cfg),
        "pairs": facts,
        "val_blocks": len(val["target"]),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={FORMAT: json.dumps(meta)}))
    return meta


def _tensors(prefix: str, target: np.ndarray, cond: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """A pair's or the validation blocks' arrays as stored: float16 images, the mask's bits packed along the last axis."""
    return {
        f"{prefix}.target": np.ascontiguousarray(target, dtype=np.float16),
        f"{prefix}.cond": np.ascontiguousarray(cond, dtype=np.float16),
        f"{prefix}.mask": np.packbits(mask, axis=-1),
    }


# ----------------------------------------------------------------------------- reading


def read_pairs_file(path: str | Path, block_size: int | None = None) -> StoredPairs:
    """The pairs and validation blocks of ``path``; ``block_size``, if given, must be the file's."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such pairs file (make one with diffiqt simulate-pairs)")
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: corrupt or not a safetensors file ({reason})") from None
    if FORMAT not in header:
        raise InputError(f"{path}: not a diffiqt pairs file (no {FORMAT!r} metadata)")
    meta = json.loads(header[FORMAT])
    if meta.get("format_version") != VERSION:
        raise InputError(f"{path}: unsupported pairs file version {meta.get('format_version')!r}")
    if block_size is not None and meta["block_size"] != block_size:
        raise ConfigError(
            f"{path} holds pairs for {meta['block_size']}³ blocks, but data.block_size is {block_size}; "
            f"simulate the pairs with the block size of the run"
        )
    try:
        pairs = [
            Pair(*_arrays(tensors, f"pairs.{i}"), scale=float(fact["scale"])) for i, fact in enumerate(meta["pairs"])
        ]
        val = _arrays(tensors, "val")
    except KeyError as exc:
        raise InputError(f"{path}: incomplete pairs file ({exc.args[0]!r} is missing)") from None
    validation = {k: torch.from_numpy(v[:, None].copy()) for k, v in zip(("target", "cond", "mask"), val)}
    return StoredPairs(pairs, validation, meta)


def _arrays(tensors: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target, cond, mask) as float32, float32 and bool."""
    target = tensors[f"{prefix}.target"].astype(np.float32)
    mask = np.unpackbits(tensors[f"{prefix}.mask"], axis=-1, count=target.shape[-1]).astype(bool)
    return target, tensors[f"{prefix}.cond"].astype(np.float32), mask
