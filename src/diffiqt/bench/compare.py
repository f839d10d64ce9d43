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
gets the same training config (preset, data, optimizer, seeds, steps × batch × block) except its network.
The methods and their networks per budget are in :data:`BUDGETS`; the report is :mod:`diffiqt.bench.report`.
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
}
# The registry's ablations: "no cross-batch" drops the attention with it, as the paper's Table 2 does.
_NO_CROSS_BATCH = {"attention": False, "cross_batch": False}
# The classical peers (untrained, :mod:`diffiqt.bench.peers`), the same in every budget.
_PEERS: dict[str, tuple[str, dict[str, object]]] = {
    "bspline": ("sitk-bspline", {}),
    "bspline5": ("sitk-bspline5", {}),
    "lanczos": ("sitk-lanczos", {}),
}
_NEITHER = {**_NO_CROSS_BATCH, "deep_feature": False}


def _diffusion_variants(network: str, settings: dict) -> dict[str, tuple[str, dict]]:
    """DiffusionIQT and its two ablations, derived from one network by switching the module flags."""
    return {
        "diffiqt": (network, settings),
        "no-crossbatch": (network, {**_NO_CROSS_BATCH, **settings}),
        "no-deepfeature-no-crossbatch": (network, {**_NEITHER, **settings}),
    }


@dataclass(frozen=True)
class Budget:
    """What every trained method gets: the same preset, data, seeds and examples; only the network differs.

    ``networks`` maps each method to (registry name, constructor overrides). ``data`` holds further
    ``data.*`` settings. ``test_region``: edge of the central cube of each test volume that is enhanced
    and scored (None: the whole volume). ``samples``: sampler seeds scored per test volume (diffusion only).
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
    sample_steps: int = DEFAULT_STEPS
    data: Mapping = field(default_factory=dict)
    seed: int = 0
    notes: tuple[str, ...] = ()

    @property
    def examples(self) -> int:
        """Training blocks every trained method sees (steps × batch)."""
        return self.steps * self.batch_size


_SMALL_WIDTHS = [16, 32, 64, 128]  # U-Net and ResU-Net at the cpu budget: 1.4M parameters, like `small`'s 1.8M
_SKIP = {"condition_skip": True}
_TINY = dict(widths=[4, 8, 8], res_blocks=1, embed_dim=16, heads=2, deep_feature_width=16, time_dim=16)

BUDGETS: dict[str, Budget] = {
    "cpu": Budget(
        "cpu",
        "2 CPU cores, under 2 hours: narrow networks, 64³ blocks, central 128³ of each test volume",
        "cpu-small",
        steps=300,
        batch_size=1,
        block_size=64,
        test_region=128,
        networks={
            "interpolation": ("interpolation", {}),
            **_PEERS,
            "linear-iqt": ("linear-iqt", {}),
            "unet": ("unet", {"widths": _SMALL_WIDTHS, **_SKIP}),
            "resunet": ("resunet", {"widths": _SMALL_WIDTHS, **_SKIP}),
            "esrgan": ("esrgan", {"channels": 16, "growth": 8, "blocks": 1, **_SKIP}),
            **_diffusion_variants("small", _SKIP),
        },
        notes=(
            "Paper-size networks are far too slow on a CPU (one forward pass of the paper's DiffusionIQT on a "
            "27 × 32³ batch takes ~40 s here), so every architecture is narrowed: the DiffusionIQT variants are "
            "the `small` network with the ablation flags switched, U-Net and ResU-Net have widths 16…128.",
            "3D ESRGAN runs every convolution at full resolution: at 0.65M parameters its forward + backward pass "
            "on a 64³ block took 10–13 s here against 1–2.5 s for the other networks (one thread, machine busy "
            "with another job), so it gets 1 RRDB of 16 channels: 0.16M parameters, ~4–5 s a step, far fewer "
            "parameters than the rest.",
            "Every trained network uses `condition_skip` (it predicts a correction added to the low-field "
            "input, so it starts at interpolation quality), as the `cpu-small` preset does: on a budget this "
            "short, a network that must first learn to copy its input would lose to interpolation whatever its "
            "architecture. The paper's networks have no such skip.",
            "Only the central 128³ cube of each test volume is enhanced and scored, to fit the time.",
        ),
    ),
    "smoke": Budget(
        "smoke",
        "seconds: tiny networks, two steps on a crop of MNI152, central 40³ of each test volume",
        "cpu-small",
        steps=2,
        batch_size=1,
        block_size=32,
        test_region=40,
        sample_steps=2,
        networks={
            "interpolation": ("interpolation", {}),
            **_PEERS,
            "linear-iqt": ("linear-iqt", {}),
            "unet": ("unet", {"widths": [4, 8], **_SKIP}),
            "resunet": ("resunet", {"widths": [4, 8], **_SKIP}),
            "esrgan": ("esrgan", {"channels": 4, "growth": 4, "blocks": 1, **_SKIP}),
            **_diffusion_variants("small", {**_TINY, **_SKIP}),
        },
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


def parse_methods(text: str | None) -> list[str]:
    """'unet,diffiqt' -> the methods in the report's order; None or empty: all of them."""
    names = [item.strip() for item in (text or "").split(",") if item.strip()] or list(METHODS)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return [name for name in METHODS if name in names]


def peer(budget: Budget, method: str) -> bool:
    """Whether ``method`` is a classical interpolation of the scan itself (:mod:`diffiqt.bench.peers`)."""
    from diffiqt.bench.peers import PEERS

    return budget.networks[method][0] in PEERS


def trains(budget: Budget, method: str) -> bool:
    """Whether ``method`` has weights to train by gradient descent (interpolation and the peers have none,
    linear IQT is fitted)."""
    return budget.networks[method][0] not in ("interpolation", "linear-iqt") and not peer(budget, method)


def fitted(budget: Budget, method: str) -> bool:
    """Whether ``method`` is fitted by least squares on the training brains (linear IQT)."""
    return budget.networks[method][0] == "linear-iqt"


def method_config(budget: Budget, method: str) -> TrainConfig:
    """The training config of ``method``: the budget's preset and settings, the method's network.

    Validation uses the anterior hold-out of the training source. Checkpoints come at the preset's
    interval or every fifth of the run, whichever is shorter, so that an interrupted bench loses little.
    """
    if not (trains(budget, method) or fitted(budget, method)):
        raise ConfigError(f"{method} has nothing to train")
    network, overrides = budget.networks[method]
    preset = preset_dict(budget.preset)
    changes = {
        "network": {"name": network, "overrides": dict(overrides)},
        "data": merge(
            {"sources": list(SPLIT.train), "val_sources": [], "block_size": budget.block_size}, dict(budget.data)
        ),
        "diffusion": {"sample_steps": budget.sample_steps},
        "steps": budget.steps,
        "batch_size": budget.batch_size,
        "seed": budget.seed,
        "device": budget.device,
        "checkpoint_every": min(preset.get("checkpoint_every", budget.steps), max(1, budget.steps // 5)),
        "keep_checkpoints": 1,
    }
    return validate(from_dict(TrainConfig, merge(preset, changes)))
