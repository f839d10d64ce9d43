"""Running ``diffiqt bench``: train each method (or reuse its finished run), enhance the test scans, score.

Layout of the output folder ``OUT``:

* ``runs/METHOD/``: each trained method's ordinary training run (config, logs, checkpoints); a finished
  one is not trained again and an interrupted one is resumed, so an interrupted bench continues;
* ``predictions/METHOD/SCAN.nii.gz``: the first sample's prediction of every test scan;
* ``results.json`` and ``results.csv``: every score, written (atomically) after each method;
* ``report.md`` and the figure: :mod:`diffiqt.bench.report`.

The definitions (split, methods, budgets, configs) are in :mod:`diffiqt.bench.compare`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable
from typing import Any

from diffiqt.bench.compare import (
    METHODS,
    SPLIT,
    TEST_SEED,
    Budget,
    Split,
    fitted,
    method_config,
    peer,
    shipped,
    trains,
)
from diffiqt.config import TrainConfig
from diffiqt.errors import ConfigError, InputError
from diffiqt.evaluation.heldout import LF_FACTOR, HeldOutCase, held_out_case
from diffiqt.imaging.io import Volume
from diffiqt.training.distributed import resolve_device

LINEAR_IQT_PAIRS = 16  # simulated training pairs linear IQT is fitted on (seconds each)


# ----------------------------------------------------------------------------- test scans


def held_out_scans(budget: Budget, split: Split = SPLIT) -> list[HeldOutCase]:
    """Each test volume (or its central ``test_region``³ cube) and its x8 axial low-field simulation.

    Scores are computed inside the brain, where the tissue maps sum to more than 1/2: Colin27's maps are
    estimated on the skull-stripped copy, so both copies are scored inside the same brain.
    """
    return [
        held_out_case(name, seed=TEST_SEED + index, region=budget.test_region) for index, name in enumerate(split.test)
    ]


# ----------------------------------------------------------------------------- one method


def finished_checkpoint(run_dir: Path, cfg: TrainConfig) -> Path | None:
    """The run's newest checkpoint if it reached ``cfg.steps`` with this config; None if unfinished."""
    from diffiqt.models.checkpoint import list_checkpoints, read_checkpoint
    from diffiqt.training.loop import check_resumable

    if not list_checkpoints(run_dir):
        return None
    checkpoint = read_checkpoint(run_dir)
    check_resumable(cfg, checkpoint)  # a run of another config is an error, never a result to reuse
    return checkpoint.folder if checkpoint.step >= cfg.steps else None


def ensure_trained(cfg: TrainConfig, run_dir: Path, progress: bool, log: Callable[[str], None]) -> Path:
    """Train ``cfg`` in ``run_dir`` unless it finished there before; an interrupted run is resumed."""
    from diffiqt.training.loop import train

    done = finished_checkpoint(run_dir, cfg)
    if done is not None:
        log(f"{run_dir} finished before; not trained again")
        return done
    log(f"training {cfg.steps} steps x {cfg.batch_size} block(s) of {cfg.data.block_size}^3 in {run_dir}")
    train(cfg, run_dir, resume=(run_dir / "config.json").exists(), progress=progress)
    done = finished_checkpoint(run_dir, cfg)
    if done is None:  # train() returns only once the last step is checkpointed
        raise RuntimeError(f"{run_dir}: training ended without its final checkpoint")
    return done


def weights_digest(checkpoint: Path) -> str:
    """SHA-256 of a checkpoint's EMA weights: earlier scores are reused only for the very same weights."""
    import hashlib

    return hashlib.sha256((checkpoint / "ema.safetensors").read_bytes()).hexdigest()


def tensors_digest(net) -> str:
    """SHA-256 of a fitted network's tensors (linear IQT's coefficients), like :func:`weights_digest`."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def training_seconds(run_dir: Path) -> float:
    """Wall time of the training steps (data simulation included) as train.csv logged it.

    ``elapsed_s`` restarts in every session of a resumed run, so each session's last value is added.
    """
    import csv

    total = last = 0.0
    with (run_dir / "train.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            elapsed = float(row["elapsed_s"])
            total += last if elapsed < last else 0.0
            last = elapsed
    return total + last


def score_model(model, scans: list[HeldOutCase], budget: Budget, device: str) -> tuple[dict, dict]:
    """({scan: [metrics of each sampler seed]}, {scan: the prediction of seed 0 on the model grid})."""
    import time

    from diffiqt.evaluation.heldout import score as score_case
    from diffiqt.inference.enhance import EnhanceOptions, enhance

    rows: dict[str, list[dict]] = {}
    first: dict[str, Volume] = {}
    for scan in scans:
        rows[scan.name] = []
        for seed in range(budget.samples if model.net.needs_time else 1):
            begin = time.perf_counter()
            options = EnhanceOptions(steps=budget.sample_steps, seed=seed, device=device)  # None: the model's own
            result = enhance(scan.lf, model, options)
            seconds = time.perf_counter() - begin
            rows[scan.name].append({"seed": seed, "inference_s": seconds, **score_case(result.mean.data, scan)})
            first.setdefault(scan.name, result.mean)
    return rows, first


def score_peer(network: str, scans: list[HeldOutCase], voxel_mm: float) -> tuple[dict, dict]:
    """:func:`score_model` for a classical peer (:mod:`diffiqt.bench.peers`): one deterministic prediction a scan."""
    import time

    from diffiqt.bench.peers import interpolate
    from diffiqt.evaluation.heldout import score as score_case

    rows: dict[str, list[dict]] = {}
    first: dict[str, Volume] = {}
    for scan in scans:
        begin = time.perf_counter()
        first[scan.name] = interpolate(scan.lf, voxel_mm, network)
        seconds = time.perf_counter() - begin
        rows[scan.name] = [{"seed": 0, "inference_s": seconds, **score_case(first[scan.name].data, scan)}]
    return rows, first


def prediction_path(out: Path, method: str, scan: str) -> Path:
    return out / "predictions" / method / f"{scan}.nii.gz"


def bench_method(
    budget: Budget,
    method: str,
    scans: list[HeldOutCase],
    out: Path,
    previous: dict | None,
    progress: bool,
    log: Callable[[str], None],
) -> dict:
    """Train (if needed), enhance and score one method; reuse ``previous`` scores of the same weights."""
    from diffiqt.imaging.io import save_volume
    from diffiqt.inference.enhance import EnhanceOptions
    from diffiqt.models.checkpoint import DEFAULT_VOXEL_MM
    from diffiqt.models.loading import Model, load_model
    from diffiqt.models.shipped import shipped_card
    from diffiqt.nets import build_network, count_parameters

    network, settings = budget.networks[method]
    entry: dict[str, Any] = {
        "label": METHODS[method],
        "network": network,
        "settings": dict(settings),
        "checkpoint": None,
        "weights": None,
        "train_s": None,
        "examples": 0,
    }
    if trains(budget, method):
        cfg = method_config(budget, method)
        run_dir = out / "runs" / method
        checkpoint = ensure_trained(cfg, run_dir, progress, log)
        model = load_model(checkpoint)
        entry.update(
            checkpoint=str(checkpoint),
            weights=weights_digest(checkpoint),
            train_s=training_seconds(run_dir),
            examples=examples(cfg),
        )
    elif fitted(budget, method):
        model, entry["train_s"] = fit_linear_iqt_model(budget, method)
        entry["weights"] = tensors_digest(model.net)
    elif shipped(budget, method):
        name, card = shipped_card(str(settings["name"]))
        model = load_model(name)
        entry.update(weights=card["sha256"], model=model.description)
    elif peer(budget, method):
        model = None  # not a network: the scan is interpolated by SimpleITK
    else:
        model = Model(build_network(network), DEFAULT_VOXEL_MM, "cubic interpolation")
    entry["parameters"] = count_parameters(model.net) if model is not None else 0
    if model is not None and model.net.needs_time:
        options = EnhanceOptions(steps=budget.sample_steps)
        entry["sampling"] = f"{options.sampler_for(model)} × {options.steps_for(model)}"
    paths = {scan.name: prediction_path(out, method, scan.name) for scan in scans}
    if previous and previous.get("weights") == entry["weights"] and all(p.exists() for p in paths.values()):
        log("scores of these weights are in results.json; not scored again")
        return {**entry, "train_s": previous["train_s"], "scans": previous["scans"]}  # a refit's time is not new work
    log(f"enhancing and scoring {', '.join(paths)}")
    if model is None:
        rows, predictions = score_peer(network, scans, DEFAULT_VOXEL_MM)
    else:
        rows, predictions = score_model(model, scans, budget, str(resolve_device(budget.device)))
    for name, prediction in predictions.items():
        save_volume(prediction, paths[name])
    return {**entry, "scans": rows}


def fit_linear_iqt_model(budget: Budget, method: str):
    """(linear IQT fitted on the budget's training brains at the test scans' x8, fitting seconds)."""
    from dataclasses import replace

    from diffiqt.models.loading import Model
    from diffiqt.training.loop import fit_linear_iqt
    from diffiqt.training.pairs import model_voxel_mm, training_and_validation

    cfg = method_config(budget, method)
    data = replace(cfg.data, lf_factor=float(LF_FACTOR), lf_factors=[])
    samples, _ = training_and_validation(data)
    net = fit_linear_iqt(samples, data, LINEAR_IQT_PAIRS, seed=budget.seed)
    return Model(net.eval(), model_voxel_mm(samples), "linear IQT"), net.fit_info["seconds"]


def examples(cfg: TrainConfig) -> int:
    """Training blocks seen by a run: steps x batch (per process)."""
    return cfg.steps * cfg.batch_size


# ----------------------------------------------------------------------------- the whole bench


def run(
    budget: Budget,
    methods: list[str],
    out: Path,
    command: str,
    *,
    docs: Path | None = None,
    figure: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Bench ``methods`` under ``budget`` into ``out``; write the report (and the docs section); return the results."""
    from diffiqt.bench import report

    log = log or _stderr
    out = Path(out)
    results = start_results(out, budget, command)
    log(f"simulating the x{LF_FACTOR} low-field test scans ({', '.join(SPLIT.test)})")
    scans = held_out_scans(budget)
    for number, method in enumerate(methods, start=1):
        method_log = _prefixed(log, f"[{number}/{len(methods)}] {METHODS[method]}")
        results["methods"][method] = bench_method(
            budget, method, scans, out, results["methods"].get(method), progress, method_log
        )
        save_results(results, out)
    predictions = {
        method: {scan.name: prediction_path(out, method, scan.name) for scan in scans}
        for method, _ in report.entries(results)
    }  # methods of earlier runs into ``out`` too
    written = report.write(results, scans, predictions, out, docs=docs, figure=figure)
    log("wrote " + ", ".join(str(p) for p in written))
    return results


def _stderr(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda text: log(f"{prefix}: {text}")


def start_results(out: Path, budget: Budget, command: str) -> dict:
    """The results in ``out`` (earlier methods kept) with this run's header; another budget's are refused."""
    import datetime
    import json

    from diffiqt.bench.measure import machine_line

    path = out / "results.json"
    results: dict[str, Any] = {"methods": {}}
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"{path}: not readable as JSON ({exc}); move it away to start afresh") from None
        if results.get("budget") != budget.name:
            raise ConfigError(f"{out} holds a bench of budget {results.get('budget')!r}; choose another --out")
    results.update(
        budget=budget.name,
        settings=asdict(budget),
        split=asdict(SPLIT),
        command=command,
        revision=git_revision(),
        date=datetime.datetime.now().isoformat(timespec="minutes"),
        machine=machine_line(resolve_device(budget.device), False),
        test_seed=TEST_SEED,
        lf_factor=LF_FACTOR,
    )
    return results


def git_revision() -> str:
    """``git rev-parse --short HEAD`` of the code being run, or "unknown" outside a git checkout."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def save_results(results: dict, out: Path) -> None:
    """results.json, and results.csv with one row per method, scan and sampler seed (both atomic)."""
    from diffiqt.imaging.io import atomic_write, save_json

    save_json(results, out / "results.json")
    rows = [
        {"method": method, "scan": scan, "parameters": entry["parameters"], "train_s": entry["train_s"], **row}
        for method, entry in results["methods"].items()
        for scan, seeds in entry["scans"].items()
        for row in seeds
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)] + [",".join(_csv(row.get(key)) for key in columns) for row in rows]
    atomic_write(out / "results.csv", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def _csv(value) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
