"""Measure a model on the held-out Colin27 brain for its model card (docs/model-card.md).

    python scripts/model_card.py --train-sources mni152 runs/brains runs/brains-synth   # the card's run
    python scripts/model_card.py --model runs/small --quick --train-sources mni152        # a plumbing check

Each case simulates a thick-slice scan of Colin27 (never used in training or validation) with a fixed
seed, enhances it and scores it against the truth under the three metric protocols of
:mod:`diffiqt.evaluation.metrics` (strict, fit, paper), beside two baselines on the same scan: cubic interpolation
(the model's own input) and linear IQT (:mod:`diffiqt.nets.linear_iqt`, a per-slice-phase least-squares filter
fitted here on the model's training brains, ``--train-sources``). Prints a Markdown table with the
machine, date and load average, writes the scores as JSON and montages as PNG. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from diffiqt.anatomy.brains import load_sources
from diffiqt.bench.measure import cpu_name, load_average
from diffiqt.cli.demo import demo_montage
from diffiqt.config import AugmentConfig, DataConfig
from diffiqt.evaluation.heldout import held_out_case, run_held_out, score
from diffiqt.inference.enhance import EnhanceOptions, enhance
from diffiqt.models.loading import Model, load_model
from diffiqt.training.loop import fit_linear_iqt
from diffiqt.training.pairs import trim_to_head

AXES = {0: "sagittal", 1: "coronal", 2: "axial"}
LINEAR_IQT_PAIRS = 16


@dataclass(frozen=True)
class Case:
    brain: str
    axis: int
    slices_mm: tuple[float, float] | None = None  # (thickness, gap); None: x8 at the paper's 3:1 ratio
    inplane_mm: float | None = None  # the scan's in-plane voxel; None: the brain's own (1 mm)
    steps: int | None = None  # None: the model's own
    sampler: str | None = None  # None: the model's own
    samples: int = 1
    picture: str | None = None

    @property
    def spacing(self) -> str:
        spacing = "x8 (6+2 mm)" if self.slices_mm is None else f"{self.slices_mm[0]:g}+{self.slices_mm[1]:g} mm"
        return spacing if self.inplane_mm is None else f"{spacing}, {self.inplane_mm:g} mm in-plane"

    @property
    def factor(self) -> int:
        return 8 if self.slices_mm is None else int(round(sum(self.slices_mm)))


CASES = [
    *(Case("colin27-brain", axis, picture="model_card_brain.png" if axis == 2 else None) for axis in (2, 0, 1)),
    *(Case("colin27", axis, picture="model_card_head.png" if axis == 2 else None) for axis in (2, 0, 1)),
    Case("colin27-brain", 2, slices_mm=(4.0, 1.0)),
    Case("colin27-brain", 2, samples=4),  # the default step, 4 mirror views: the uncertainty map
    Case("colin27-brain", 2, steps=20, samples=1),
    Case("colin27-brain", 2, steps=20, samples=4, picture="model_card_samples.png"),
    Case("colin27-brain", 2, steps=20, sampler="paper"),  # the paper's sampler, for comparison
    Case("colin27-brain", 2, inplane_mm=1.5),  # a clinical in-plane voxel, resampled to 1 mm by enhancement
]
QUICK = [Case("colin27-brain", 2, picture="model_card_quick.png")]


def cell(values: list[float | None], digits: int) -> str:
    """'cubic / linear / model (Δ model - cubic)'."""
    shown = " / ".join("–" if v is None else f"{v:.{digits}f}" for v in values)
    if values[0] is None or values[-1] is None:
        return shown
    return f"{shown} ({values[-1] - values[0]:+.{digits}f})"


def row(case: Case, steps: int, sampler: str, seconds: float, scores: dict) -> str:
    methods = [scores["cubic"], scores["linear-iqt"], scores["enhanced"]]
    columns = [
        cell([m.get(key) for m in methods], 3 if "ssim" in key else 2)
        for key in ("psnr", "fit_psnr", "ssim", "fit_ssim", "paper_psnr", "paper_ms_ssim")
    ]
    rho = scores["enhanced"].get("uncertainty_error_spearman")
    scalp = scores["enhanced"].get("outside_brain_mae_pct")
    scalp_text = "–" if scalp is None else f"{scores['cubic']['outside_brain_mae_pct']:.2f} → {scalp:.2f}"
    return (
        f"| {case.brain} | {AXES[case.axis]} {case.spacing} | {sampler} {steps}×{case.samples} | "
        + " | ".join(columns)
        + f" | {scalp_text} | {'–' if rho is None else f'{rho:.2f}'} | {seconds:.0f} |"
    )


def linear_iqt_model(sources: list[str], factor: int, voxel_mm: float) -> Model:
    """Linear IQT fitted on the training brains at slice step ``factor`` (random slice axis per pair)."""
    samples = [trim_to_head(s) for s in load_sources(sources)]
    cfg = DataConfig(sources=sources, lf_factor=float(factor), lf_axis=None, augment=AugmentConfig(enabled=False))
    return Model(fit_linear_iqt(samples, cfg, LINEAR_IQT_PAIRS, seed=0).eval(), voxel_mm, "linear IQT", steps=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--train-sources",
        nargs="+",
        required=True,
        help="the model's training brains (bundled names, files or folders): linear IQT is fitted on them",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one case only (plumbing check)")
    parser.add_argument("--cases", type=int, nargs="+", help="indices into CASES to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("model_card_results"), help="JSON and PNG go here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"{model.description} · git {revision or 'unknown'} · {datetime.date.today().isoformat()} · {cpu_name()} · "
        f"torch threads {torch.get_num_threads()} · load average at start {load_average()}\n"
    )
    print("Each cell: cubic / linear IQT / model (Δ model − cubic).\n")
    print(
        "| brain | slices | sampler steps×samples | PSNR strict | PSNR fit | SSIM strict | SSIM fit | PSNR paper | "
        "MS-SSIM paper | scalp MAE % | ρ(sd, error) | enhance s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---:|---:|")
    cases = QUICK if args.quick else [CASES[i] for i in args.cases] if args.cases else CASES
    linear: dict[int, Model] = {}
    results = []
    for case in cases:
        if case.factor not in linear:
            linear[case.factor] = linear_iqt_model(args.train_sources, case.factor, model.voxel_mm)
        held = held_out_case(
            case.brain, seed=args.seed, axis=case.axis, slices_mm=case.slices_mm, inplane_mm=case.inplane_mm
        )
        steps, sampler = case.steps or model.steps, case.sampler or model.sampler
        result = run_held_out(
            held, model, EnhanceOptions(steps=steps, sampler=sampler, samples=case.samples, seed=args.seed)
        )
        baseline = enhance(held.lf, linear[case.factor], EnhanceOptions())
        result.scores["linear-iqt"] = score(baseline.mean.data, held)
        print(row(case, steps, sampler, result.seconds, result.scores), flush=True)
        results.append(
            {
                "brain": case.brain,
                "axis": case.axis,
                "slices_mm": case.slices_mm,
                "inplane_mm": case.inplane_mm,
                "steps": steps,
                "sampler": sampler,
                "samples": case.samples,
                "seconds": result.seconds,
                "scores": result.scores,
            }
        )
        if case.picture:
            demo_montage(held, result, args.out / case.picture)
    (args.out / "model_card.json").write_text(json.dumps(results, indent=1))
    print(f"\nload average at the end {load_average()}")


if __name__ == "__main__":
    main()
