"""``diffiqt bench``: the paper's Table 1 and Table 2 methods trained at an equal budget and scored alike.

The split, the same for every method and budget (:data:`SPLIT`):

* **training**: the MNI152 template only. The training pipeline makes pseudo-subjects of it: every
  simulated pair is a fresh torchio augmentation (affine, sometimes elastic, bias field, gamma) of the
  brain followed by a fresh low-field simulation (:mod:`diffiqt.training.pairs`);
* **validation during training**: the anterior hold-out slab of the training source
  (``data.val_sources`` is empty), so no test volume is seen while training;
* **test**: Colin27 skull-stripped (``colin27-brain``) and whole head (``colin27``): another real subject,
  never used for training or validation: training itself refuses any source that names, lies beside or
  copies a test brain (:func:`diffiqt.training.pairs.checked_sources`).

Each test volume (or its central ``test_region``³ cube) is degraded once by the x8 low-field simulator
with a fixed seed; every method enhances the same low-field scan. An equal budget: every trained method
gets the same training config (preset, data, optimizer, seeds, steps × batch × block) except its network,
and, for the methods that measure a mechanism of the training recipe itself (``Budget.recipes``: posterior-
mean training), that one setting. The shipped default model is scored beside them as it is: it was trained
outside the bench, on more brains and for longer (its card says how). The methods and their networks per
budget are in :data:`BUDGETS`; the report is :mod:`diffiqt.bench.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping


from diffiqt.anatomy.brains import TEST_BRAINS
from diffiqt.config import DEFAULT_STEPS, TrainConfig, from_dict, merge, preset_dict, validate
from diffiqt.errors import ConfigError

TEST_SEED = 2023  # seed of the test volumes' low-field simulations, the same for every method


@dataclass(frozen=True)
class Split:
    """Which volumes train, validate and test (bundled names, :mod:`diffiqt.anatomy.brains`)."""

    train: tuple[str, ...] = ("mni152",)
    validation: str = "the anterior hold-out slab of each training source (data.val_sources empty)"
    test: tuple[str, ...] = TEST_BRAINS


SPLIT = Split()


def bench_split() -> Split:
    """The training/validation/test split of every bench (see the module docstring)."""
    return SPLIT


# ----------------------------------------------------------------------------- methods and budgets

# Method key -> name in the report, in the order of the paper's Table 1, then Table 2's ablations.
METHODS = {
    "interpolation": "Interpolation",
    "bspline": "B-spline (SimpleITK)",
    "bspline5": "Quintic B-spline (SimpleITK)",
    "lanczos": "Lanczos windowed sinc (SimpleITK)",
    "linear-iqt": "Linear IQT",
    "unet": "3D U-Net",
    "resunet": "3D ResU-Net",
    "esrgan": "3D ESRGAN",
    "diffiqt": "DiffusionIQT",
    "no-crossbatch": "DiffusionIQT, deep feature only",
    "no-deepfeature-no-crossbatch": "DiffusionIQT, neither module",
    "diffiqt-full-grid": "DiffusionIQT, full-resolution grid",
    "diffiqt-no-mean": "DiffusionIQT, no posterior-mean training",
    "shipped": "diffiqt default model (own training)",
}
SHIPPED = "shipped-model"  # the network name of the shipped-model method: settings {"name": a shipped model}
# The classical peers (untrained, :mod:`diffiqt.bench.peers`), the same in every budget.
_PEERS: dict[str, tuple[str, dict[str, object]]] = {
    "bspline": ("sitk-bspline", {}),
    "bspline5": ("sitk-bspline5", {}),
    "lanczos": ("sitk-lanczos", {}),
}


@dataclass(frozen=True)
class Budget:
    """What every trained method gets: the same preset, data, seeds and examples; only the network differs.

    ``networks`` maps each method to (registry name, constructor overrides). ``recipes`` maps a method to
    config changes beyond its network (a training mechanism under test), merged last. ``data`` holds further
    ``data.*`` settings. ``test_region``: edge of the central cube of each test volume that is enhanced
    and scored (None: the whole volume). ``samples``: sampler seeds scored per test volume (diffusion only).
    ``sample_steps``: the sampling steps of every diffusion method, or None for each one's own (its preset's
    or recipe's ``diffusion.sample_steps`` and sampler).
    """

    name: str
    summary: str
    preset: str
    steps: int
    batch_size: int
    block_size: int
    networks: Mapping[str, tuple[str, dict]]
    device: str = "cpu"
    test_region: int | None = None
    samples: int = 1
    sample_steps: int | None = DEFAULT_STEPS
    data: Mapping = field(default_factory=dict)
    recipes: Mapping[str, Mapping] = field(default_factory=dict)
    seed: int = 0
    notes: tuple[str, ...] = ()

    @property
    def examples(self) -> int:
        """Training blocks every trained method sees (steps × batch)."""
        return self.steps * self.batch_size


_SMALL_WIDTHS = [16, 32, 64, 128]  # U-Net and ResU-Net at the cpu budget: 1.4M parameters
_SKIP = {"condition_skip": True}
_TINY = dict(widths=[4, 8, 8], res_blocks=1, embed_dim=16, heads=2, deep_feature_width=16, time_dim=16)
# The shipped design at the cpu budget: 8³ attention patches, so that a 64³ block holds whole (8, 8, 64) cells.
_LOWFIELD = ("lowfield-small", {"zero_head": True, "widths": [64, 64, 128], "patch_size": 8})
# Two levels, so that 4³ patches still hold 2³ attention tokens at the deepest: (4, 4, 32) cells fit 32³ blocks.
_TINY_LOWFIELD = ("lowfield-small", {**_TINY, "widths": [4, 8], "zero_head": True, "patch_size": 4})


def _no_mean(steps: int) -> dict:
    """The recipe change of the no-posterior-mean variant: every noise level alike, the paper's sampler."""
    return {"diffusion": {"mean_fraction": 0.0, "sampler": "paper", "sample_steps": steps}}


def _lowfield_variants(base: tuple[str, dict]) -> dict[str, tuple[str, dict]]:
    """DiffusionIQT on the low-field grid and its ablations: without attention, then without the deep feature
    too (cross-batch is how such a network runs at all, so it stays)."""
    network, settings = base
    return {
        "diffiqt": base,
        "no-crossbatch": (network, {**settings, "attention": False}),
        "no-deepfeature-no-crossbatch": (network, {**settings, "attention": False, "deep_feature": False}),
    }


BUDGETS: dict[str, Budget] = {
    "cpu": Budget(
        "cpu",
        "2 CPU cores, about an hour: the shipped recipe's narrow networks, 64³ blocks, central 128³ of each test volume",
        "cpu-lowfield",
        steps=300,
        batch_size=1,
        block_size=64,
        test_region=128,
        sample_steps=None,
        networks={
            "interpolation": ("interpolation", {}),
            **_PEERS,
            "linear-iqt": ("linear-iqt", {}),
            "unet": ("unet", {"widths": _SMALL_WIDTHS, **_SKIP}),
            "resunet": ("resunet", {"widths": _SMALL_WIDTHS, **_SKIP}),
            "esrgan": ("esrgan", {"channels": 16, "growth": 8, "blocks": 1, **_SKIP}),
            **_lowfield_variants(_LOWFIELD),
            "diffiqt-full-grid": ("small", {"zero_head": True}),
            "diffiqt-no-mean": _LOWFIELD,
            "shipped": (SHIPPED, {"name": "default"}),
        },
        recipes={"diffiqt-no-mean": _no_mean(DEFAULT_STEPS)},
        notes=(
            "DiffusionIQT is the shipped model's design (`lowfield-small`: the 8 thin slices under each thick one "
            "folded into channels, so most layers see an eighth of the voxels; widths 64/64/128) with 8³-voxel "
            "attention patches instead of 16³, so that a 64³ block holds whole cells; it trains under the shipped "
            "recipe (`cpu-lowfield`: posterior-mean training on 3 steps in 4, residual preconditioning) and "
            "samples with that recipe's one `refine` step.",
            "On the low-field grid the network always runs as one tensor (cross-batch cannot be switched off: "
            "independent patches would be cut as cubes), so its Table 2 ablations remove the attention "
            "(deep feature only) and then the deep-feature module too (neither module).",
            "Two more variants each change one mechanism of the design: the same network family on the "
            "full-resolution grid (`small`, 8 channels at 1 mm, as diffiqt's earlier models), and the low-field "
            "network trained on every noise level alike (no posterior-mean training) and sampled with the paper's "
            "sampler, 20 steps.",
            "The shipped default model is not trained by the bench: it is scored as shipped (its training, on "
            "21 brains for far longer, is on its model card), as the tool a user would run.",
            "3D ESRGAN runs every convolution at full resolution: at 0.65M parameters its forward + backward pass "
            "on a 64³ block took 10–13 s here against 1–2.5 s for the other networks (one thread, machine busy "
            "with another job), so it gets 1 RRDB of 16 channels: 0.16M parameters, ~4–5 s a step, far fewer "
            "parameters than the rest.",
            "Every trained network starts as the identity on its low-field input (`condition_skip` for the "
            "regression networks; `zero_head` under the recipe's residual preconditioning for DiffusionIQT), so it "
            "starts at interpolation quality: on a budget this short, a network that must first learn to copy its "
            "input would lose to interpolation whatever its architecture. The paper's networks have no such skip.",
            "Only the central 128³ cube of each test volume is enhanced and scored, to fit the time.",
        ),
    ),
    "smoke": Budget(
        "smoke",
        "seconds: tiny networks, two steps on a crop of MNI152, central 40³ of each test volume",
        "cpu-lowfield",
        steps=2,
        batch_size=1,
        block_size=32,
        test_region=40,
        sample_steps=None,
        networks={
            "interpolation": ("interpolation", {}),
            **_PEERS,
            "linear-iqt": ("linear-iqt", {}),
            "unet": ("unet", {"widths": [4, 8], **_SKIP}),
            "resunet": ("resunet", {"widths": [4, 8], **_SKIP}),
            "esrgan": ("esrgan", {"channels": 4, "growth": 4, "blocks": 1, **_SKIP}),
            **_lowfield_variants(_TINY_LOWFIELD),
            "diffiqt-full-grid": ("small", {**_TINY, "zero_head": True}),
            "diffiqt-no-mean": _TINY_LOWFIELD,
            "shipped": (SHIPPED, {"name": "default"}),
        },
        recipes={"diffiqt-no-mean": _no_mean(2)},
        data={
            "crop": [[60, 124], [50, 170], [50, 114]],
            "num_workers": 0,
            "pool_size": 1,
            "refresh_every": 100,
            "val_blocks": 1,
            "augment": {"enabled": False},
        },
        notes=("A plumbing check only: the numbers mean nothing.",),
    ),
    "paper": Budget(
        "paper",
        "one GPU: the paper-size networks and the paper preset (96³ blocks, 200 000 steps), whole volumes",
        "paper",
        steps=200_000,
        batch_size=1,
        block_size=96,
        device="auto",
        samples=3,
        networks={
            "interpolation": ("interpolation", {}),
            **_PEERS,
            "linear-iqt": ("linear-iqt", {}),
            "unet": ("unet", {}),
            "resunet": ("resunet", {}),
            "esrgan": ("esrgan", {}),
            "diffiqt": ("paper", {}),
            "no-crossbatch": ("no-crossbatch", {}),
            "no-deepfeature-no-crossbatch": ("no-deepfeature-no-crossbatch", {}),
        },
        data={"layout": "auto"},  # cross-batch networks get 27 patches, the others the 96³ block
    ),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise ConfigError(f"unknown budget {name!r}; choose from {', '.join(BUDGETS)}")
    return BUDGETS[name]


def parse_methods(text: str | None, budget: Budget) -> list[str]:
    """'unet,diffiqt' -> the methods in the report's order; None or empty: all of the budget's."""
    offered = [name for name in METHODS if name in budget.networks]
    names = [item.strip() for item in (text or "").split(",") if item.strip()] or offered
    unknown = [name for name in names if name not in offered]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r} for budget {budget.name!r}; choose from {', '.join(offered)}")
    return [name for name in offered if name in names]


def peer(budget: Budget, method: str) -> bool:
    """Whether ``method`` is a classical interpolation of the scan itself (:mod:`diffiqt.bench.peers`)."""
    from diffiqt.bench.peers import PEERS

    return budget.networks[method][0] in PEERS


def shipped(budget: Budget, method: str) -> bool:
    """Whether ``method`` is a shipped model, scored as it is (trained outside the bench)."""
    return budget.networks[method][0] == SHIPPED


def trains(budget: Budget, method: str) -> bool:
    """Whether ``method`` has weights to train by gradient descent (interpolation and the peers have none,
    linear IQT is fitted, a shipped model comes trained)."""
    untrained = ("interpolation", "linear-iqt", SHIPPED)
    return budget.networks[method][0] not in untrained and not peer(budget, method)


def fitted(budget: Budget, method: str) -> bool:
    """Whether ``method`` is fitted by least squares on the training brains (linear IQT)."""
    return budget.networks[method][0] == "linear-iqt"


def folds_slices(network: str, overrides: Mapping) -> bool:
    """Whether the network runs on the low-field grid (``slice_fold`` > 1); built on the meta device, no weights."""
    import torch

    from diffiqt.nets import build_network

    with torch.device("meta"):
        return build_network(network, **overrides).slice_fold > 1


def method_config(budget: Budget, method: str) -> TrainConfig:
    """The training config of ``method``: the budget's preset and settings, the method's network, and the
    method's recipe change if it has one.

    Validation uses the anterior hold-out of the training source. Checkpoints come at the preset's
    interval or every fifth of the run, whichever is shorter, so that an interrupted bench loses little.
    """
    if not (trains(budget, method) or fitted(budget, method)):
        raise ConfigError(f"{method} has nothing to train")
    network, overrides = budget.networks[method]
    preset = preset_dict(budget.preset)
    # A network on the low-field grid takes its blocks with the slice axis last; the same cube for every method.
    slice_block = budget.block_size if folds_slices(network, overrides) else None
    changes = {
        "network": {"name": network, "overrides": dict(overrides)},
        "data": merge(
            {"sources": list(SPLIT.train), "val_sources": [], "block_size": budget.block_size},
            {**dict(budget.data), "slice_block": slice_block},
        ),
        "steps": budget.steps,
        "batch_size": budget.batch_size,
        "seed": budget.seed,
        "device": budget.device,
        "checkpoint_every": min(preset.get("checkpoint_every", budget.steps), max(1, budget.steps // 5)),
        "keep_checkpoints": 1,
    }
    if budget.sample_steps is not None:
        changes["diffusion"] = {"sample_steps": budget.sample_steps}
    return validate(from_dict(TrainConfig, merge(merge(preset, changes), dict(budget.recipes.get(method, {})))))
