"""A checkpoint's EMA weights through a channel that takes few, small files: shards out, a run folder back.

    python scripts/checkpoint_shards.py split RUN_OR_CHECKPOINT --out DIR     # on the machine that trained
    python scripts/checkpoint_shards.py join DIR --out RUN_DIR                # back here

An optional helper for one development setup, not part of diffiqt: a borrowed GPU machine hands back at
most 8 files of at most 16 MiB each, 64 MiB in all, while the paper network's weights alone are 56.5 MiB
in float32. ``split`` (:func:`split_checkpoint`) writes the EMA weights of a checkpoint (what
enhancement and ``diffiqt export-model`` use) as safetensors shards beside the checkpoint's
``config.json``: in float32 when they fit the limits, else in float16 (what export-model ships by
default anyway). ``join`` (:func:`join_checkpoint`) turns the shards back into a run folder with one
checkpoint, which ``diffiqt enhance --model`` and ``diffiqt export-model`` read. The raw weights and the
optimizer state stay behind, so that checkpoint can be used and exported, not resumed.
scripts/gpu_train.sh calls ``split``; see docs/training.md ("Optional: training on a GPU ...").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffiqt.errors import ConfigError, DiffiqtError, InputError, OutputError
from diffiqt.models.checkpoint import (
    CHECKPOINT_DIR,
    check_fits,
    network_from_config,
    read_checkpoint,
    read_tensors,
    save_checkpoint,
)

CONFIG_NAME = "checkpoint.json"  # the checkpoint's config.json, renamed so that it cannot be taken for a run's
SHARD_GLOB = "ema-*-of-*.safetensors"
LOGS = ("train.csv", "val.csv")
MIB = 2**20


def split_checkpoint(
    checkpoint: str | Path, out: str | Path, shard_mib: float = 15.0, max_shards: int = 5, total_mib: float = 60.0
) -> list[Path]:
    """Write the EMA weights of ``checkpoint`` (or a run's newest) as shards into ``out``; returns the files written.

    At most ``max_shards`` shards of ``shard_mib`` MiB and ``total_mib`` MiB in all
    (the defaults leave room for the config and two CSV logs under the machine's limits).
    """
    ckpt = read_checkpoint(checkpoint)
    tensors = read_tensors(ckpt.folder / "ema.safetensors")
    for dtype in (torch.float32, torch.float16):
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        shards = _shards(cast, int(shard_mib * MIB))
        if len(shards) <= max_shards and sum(_nbytes(s) for s in shards) <= total_mib * MIB:
            break
    else:
        raise ConfigError(
            f"{ckpt.folder}: the EMA weights do not fit {max_shards} shards of {shard_mib} MiB "
            f"({total_mib} MiB in all) even in float16"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, shard in enumerate(shards, start=1):
        written.append(out / f"ema-{index}-of-{len(shards)}.safetensors")
        save_file(shard, str(written[-1]))
    written.append(Path(shutil.copyfile(ckpt.folder / "config.json", out / CONFIG_NAME)))
    return written


def _shards(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Tensors packed into dicts of at most ``limit`` bytes (safetensors' header comes on top: a few KiB).

    First fit, largest first: the paper network's 56.5 MiB take 4 shards of 15 MiB this way, 5 in key order.
    """
    shards: list[dict[str, torch.Tensor]] = []
    for name, tensor in sorted(tensors.items(), key=lambda item: -_size(item[1])):
        if _size(tensor) > limit:
            raise ConfigError(f"weight {name!r} alone is {_size(tensor) / MIB:.1f} MiB, more than a shard may hold")
        shard = next((s for s in shards if _nbytes(s) + _size(tensor) <= limit), None)
        if shard is None:
            shard = {}
            shards.append(shard)
        shard[name] = tensor.contiguous()
    return shards


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(_size(t) for t in tensors.values())


def join_checkpoint(folder: str | Path, run_dir: str | Path) -> Path:
    """Rebuild, in ``run_dir``, a checkpoint from the shards and config in ``folder``; returns its folder.

    ``model.safetensors`` holds the EMA weights too (the raw weights were not brought
    back), and the optimizer state is absent, so ``--resume`` refuses the run.
    train.csv and val.csv are copied into ``run_dir`` if ``folder`` has them. A ``run_dir`` that already
    holds a run is refused: its logs would be replaced and its checkpoint of that step stripped of the
    optimizer state and raw weights, so that it could no longer be resumed.
    """
    folder, run_dir = Path(folder), Path(run_dir)
    held = next((name for name in ("config.json", CHECKPOINT_DIR, *LOGS) if (run_dir / name).exists()), None)
    if held is not None:
        raise OutputError(f"{run_dir}: already holds a run ({held}); join into a new folder")
    if not (folder / CONFIG_NAME).is_file():
        raise InputError(f"{folder}: no {CONFIG_NAME}; give the folder that split wrote")
    meta = json.loads((folder / CONFIG_NAME).read_text())
    shards = sorted(folder.glob(SHARD_GLOB))
    counts = {path.stem.rsplit("-of-", 1)[1] for path in shards}
    if not shards or counts != {str(len(shards))}:
        raise InputError(f"{folder}: expected a complete set of {SHARD_GLOB} shards, found {len(shards)}")
    tensors: dict[str, torch.Tensor] = {}
    for path in shards:
        tensors.update(read_tensors(path))
    net = network_from_config(meta["network"])
    check_fits(net, tensors, str(folder))
    net.load_state_dict(tensors)  # back in float32, whatever the shards held
    carried = {k: v for k, v in meta.items() if k not in ("format", "version", "step", "optimizer")}
    carried["transfer"] = {
        "from": str(folder),
        "dtypes": sorted({str(v.dtype) for v in tensors.values()}),
        "model.safetensors": "a copy of the EMA weights; raw weights and optimizer state stayed behind",
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in LOGS:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, run_dir / name)
    return save_checkpoint(run_dir, int(meta["step"]), carried, net, net, optimizer=None)


def main(argv: list[str] | None = None) -> int:
    """The two subcommands; a user error is one line on stderr and exit status 2 (as diffiqt's commands)."""
    parser = argparse.ArgumentParser(
        prog="checkpoint_shards.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser(
        "split",
        help="write a checkpoint's EMA weights as a few small files (float32 if they fit, else float16)",
        description="Write a checkpoint's EMA weights as a few small files (float32 if they fit, else float16). "
        "The defaults fit what a borrowed GPU machine hands back (8 files of 16 MiB, 64 MiB in all) "
        "with room for checkpoint.json, train.csv and val.csv.",
    )
    split.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    split.add_argument("-o", "--out", type=Path, required=True, help="folder for the shards and checkpoint.json")
    split.add_argument("--shard-mib", type=float, default=15.0, help="largest shard in MiB (default: 15)")
    split.add_argument("--max-shards", type=int, default=5, help="most shards (default: 5)")
    split.add_argument("--total-mib", type=float, default=60.0, help="most MiB of shards in all (default: 60)")
    join = commands.add_parser(
        "join",
        help="turn split's files back into a run folder",
        description="Turn split's files back into a run folder that enhance --model and export-model read, e.g. "
        "`join gpu_out/ --out runs/gpu-paper`, then `diffiqt export-model runs/gpu-paper --name paper-gpu --default`.",
    )
    join.add_argument("folder", type=Path, help="the folder split wrote (shards and checkpoint.json)")
    join.add_argument("-o", "--out", type=Path, required=True, help="run folder to create the checkpoint in")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            for path in split_checkpoint(args.checkpoint, args.out, args.shard_mib, args.max_shards, args.total_mib):
                print(path)
        else:
            print(join_checkpoint(args.folder, args.out))
    except DiffiqtError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
