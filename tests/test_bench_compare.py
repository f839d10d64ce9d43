"""diffiqt bench: the test subject stays out of training, the budget is equal, the smoke bench runs end to end."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import run_cli
from diffiqt.anatomy.brains import colin27_available
from diffiqt.bench import compare, report
from diffiqt.cli import app
from diffiqt.config import merge
from diffiqt.errors import ConfigError, InputError, OutputError
from diffiqt.evaluation import metrics
from diffiqt.nets import build_network

needs_colin27 = pytest.mark.skipif(not colin27_available(), reason="Debian's mricron-data (Colin27) is not installed")
SMOKE_METHODS = ["interpolation", "linear-iqt", "unet", "diffiqt", "diffiqt-no-mean", "shipped"]
DIFFUSION_METHODS = ("diffiqt", "no-crossbatch", "no-deepfeature-no-crossbatch", "diffiqt-full-grid", "diffiqt-no-mean")
PEER_METHODS = ("bspline", "bspline5", "lanczos")


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_configs(budget: compare.Budget) -> dict:
    return {
        method: compare.method_config(budget, method) for method in budget.networks if compare.trains(budget, method)
    }


def with_sources(cfg, sources: list[str], val_sources: list[str]):
    return replace(cfg, data=replace(cfg.data, sources=sources, val_sources=val_sources))


# ----------------------------------------------------------------------------- the split


@needs_colin27
def test_no_test_volume_can_enter_the_training_or_validation_sources_of_any_method(tmp_path):
    """Every method's config keeps the test brains out, and training refuses them however they are named."""
    from diffiqt.anatomy.brains import held_out_identity
    from diffiqt.training.pairs import checked_sources

    split = compare.bench_split()
    assert split.train == ("mni152",) and set(split.test) == {"colin27", "colin27-brain"}
    for budget in compare.BUDGETS.values():
        for cfg in trained_configs(budget).values():
            assert cfg.data.sources == ["mni152"] and cfg.data.val_sources == []  # validation: MNI's anterior slab
    identity = held_out_identity()
    assert set(identity.names) == set(split.test) and len(identity.hashes) == 2
    files = {path.name: path for path in identity.files}
    renamed = tmp_path / "subject_01.nii.gz"
    shutil.copy(files["ch2bet.nii.gz"], renamed)  # a copy under another name: caught by its voxel data
    leaks = ["colin27", "colin27-brain", str(files["ch2.nii.gz"]), str(renamed), str(tmp_path)]
    sibling = min(identity.folders) / "ch2better.nii.gz"  # another image of the same subject in the same folder
    leaks += [str(sibling)] if sibling.exists() else []
    for spec in leaks:
        with pytest.raises(InputError, match="test brain"):
            checked_sources(spec)
    assert checked_sources("mni152")[0].name == "mni152"


# ----------------------------------------------------------------------------- the budgets


@pytest.mark.parametrize("name", list(compare.BUDGETS))
def test_an_equal_budget_gives_every_trained_method_the_same_examples_data_and_seeds(name):
    budget = compare.BUDGETS[name]
    configs = trained_configs(budget)
    assert set(configs) == set(budget.networks) - {"interpolation", "linear-iqt", "shipped", *PEER_METHODS}
    examples = {m: (c.steps * c.batch_size, c.data.block_size) for m, c in configs.items()}
    assert set(examples.values()) == {(budget.examples, budget.block_size)}
    # The same cube for all: networks on the low-field grid only take it with the slice axis last.
    assert {c.data.slice_block for c in configs.values()} <= {None, budget.block_size}
    without_network = {m: {k: v for k, v in c.to_dict().items() if k != "network"} for m, c in configs.items()}
    for settings in without_network.values():
        settings["data"]["slice_block"] = None
    common = without_network["unet"]
    for method, settings in without_network.items():  # a recipe method differs by its recipe and nothing else
        assert settings == merge(common, dict(budget.recipes.get(method, {}))), method
    assert set(budget.recipes) <= {"diffiqt-no-mean"}
    with torch.device("meta"):  # the paper-size networks are built without allocating their weights
        for method, (network, settings) in budget.networks.items():
            if compare.peer(budget, method) or compare.shipped(budget, method):
                continue  # no network to build: tested below and in the smoke bench
            assert build_network(network, **settings).needs_time == (method in DIFFUSION_METHODS)


def test_the_cpu_budget_changes_one_mechanism_of_the_shipped_design_per_diffusioniqt_variant():
    from diffiqt.models.shipped import shipped_card

    budget = compare.BUDGETS["cpu"]
    full, deep_only, neither, full_grid, no_mean = (budget.networks[m] for m in DIFFUSION_METHODS)
    _, card = shipped_card("default")
    assert full[0] == card["network"]["name"] == "lowfield-small"  # the shipped design
    assert full[1]["widths"] == card["network"]["widths"] and full[1]["zero_head"] == card["network"]["zero_head"]
    assert deep_only[1] == {**full[1], "attention": False}
    assert neither[1] == {**deep_only[1], "deep_feature": False}
    assert full_grid == ("small", {"zero_head": True}) and no_mean == full
    recipe = compare.method_config(budget, "diffiqt-no-mean").diffusion
    shipped_recipe = compare.method_config(budget, "diffiqt").diffusion
    assert recipe.mean_fraction == 0 and shipped_recipe.mean_fraction == 0.75
    assert (recipe.sampler, recipe.sample_steps) == ("paper", 20) and shipped_recipe.sample_steps == 1
    assert compare.shipped(budget, "shipped") and not compare.trains(budget, "shipped")
    with pytest.raises(ConfigError, match="nothing to train"):
        compare.method_config(budget, "shipped")


def test_unknown_budget_or_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown budget"):
        compare.get_budget("huge")
    cpu, paper = compare.BUDGETS["cpu"], compare.BUDGETS["paper"]
    with pytest.raises(ConfigError, match="unknown method 'gan'"):
        compare.parse_methods("unet,gan", cpu)
    with pytest.raises(ConfigError, match="unknown method 'shipped' for budget 'paper'"):
        compare.parse_methods("shipped", paper)
    assert compare.parse_methods("diffiqt, interpolation", cpu) == ["interpolation", "diffiqt"]  # the report's order
    assert "shipped" in compare.parse_methods(None, cpu) and "shipped" not in compare.parse_methods(None, paper)


# ----------------------------------------------------------------------------- the classical peers


def test_the_peers_give_the_model_grid_and_a_bspline_beats_nearest_neighbour_on_a_smooth_volume():
    pytest.importorskip("SimpleITK")
    from diffiqt.bench.peers import interpolate
    from diffiqt.imaging.io import Volume
    from diffiqt.imaging.resample import shared_extent, to_isotropic

    # A smooth truth on a 1 mm grid, and its every 6th axial slice as a thick-slice scan.
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (40, 36, 60)), indexing="ij")
    truth = 100 + 40 * np.sin(i / 5.0) * np.cos(j / 7.0) * np.sin(k / 6.0 + 0.3)
    affine = np.diag([1.0, 1.0, 6.0, 1.0])
    affine[:3, 3] = (-20.0, 10.0, -30.0)
    scan = Volume(truth[:, :, ::6], affine)
    errors = {}
    for method in (*PEER_METHODS, "nearest"):
        network = "sitk-nearest" if method == "nearest" else compare.BUDGETS["cpu"].networks[method][0]
        out = interpolate(scan, 1.0, network)
        assert out.shape == to_isotropic(scan, 1.0).shape and np.allclose(out.affine, to_isotropic(scan, 1.0).affine)
        common = shared_extent(out.shape, truth.shape)
        inner = (slice(None), slice(None), slice(0, 48))  # where the slices are, not the edge values past the last
        errors[method] = float(np.sqrt(np.mean((out.data[common][inner] - truth[common][inner]) ** 2)))
    assert errors["bspline"] < 0.5 * errors["nearest"] and errors["lanczos"] < 0.5 * errors["nearest"], errors
    assert np.allclose(
        interpolate(scan, 1.0, "sitk-bspline").data[:, :, ::6][:, :, :8], scan.data[:, :, :8], atol=1e-2
    )  # it interpolates


def test_the_peers_are_untrained_bench_methods_in_every_budget():
    for budget in compare.BUDGETS.values():
        assert all(
            compare.peer(budget, m) and not compare.trains(budget, m) and not compare.fitted(budget, m)
            for m in PEER_METHODS
        )
        assert not compare.peer(budget, "interpolation") and not compare.peer(budget, "linear-iqt")


# ----------------------------------------------------------------------------- the report


def scores(psnr: list[float]) -> dict:
    keys = ("paper_psnr", "paper_ms_ssim", "psnr", "ssim", "ms_ssim", "seg_miou", "dice_csf", "dice_gm", "dice_wm")
    return {"colin27": [{"seed": i, "inference_s": 1.0, **{k: value for k in keys}} for i, value in enumerate(psnr)]}


def test_report_gives_mean_and_sd_over_seeds_and_says_where_diffusioniqt_loses():
    entry = {"network": "x", "settings": {}, "parameters": 1_500_000, "train_s": 600.0, "examples": 10}
    results = {
        "methods": {
            "unet": {**entry, "label": "3D U-Net", "scans": scores([0.5])},
            "diffiqt": {**entry, "label": "DiffusionIQT", "scans": scores([0.3, 0.5])},
        }
    }
    table = report.scan_table(results, ["colin27"])
    assert "0.4000 ± 0.1000" in table and "| 3D U-Net | 1.50M | 10.0 | 1.0 | 0.50 |" in table
    assert "does **not** beat 3D U-Net on PSNR (paper protocol) 0.4 vs 0.5" in report.honest_sentence(results)
    assert "3D U-Net 0.5 | DiffusionIQT 0.4" not in report.ordering_table(results)  # the paper's order first
    assert "| 1 | DiffusionIQT 33.7 | 3D U-Net 0.5 |" in report.ordering_table(results)


def test_the_docs_section_is_replaced_between_the_markers_and_broken_markers_are_refused(tmp_path):
    once = report.replace_section("# Benchmarks\n\ntext\n", "## new\n", tmp_path)
    twice = report.replace_section(once, "## newer\n", tmp_path)
    assert twice.count(report.START) == 1 and "## newer" in twice and "## new\n" not in twice and "text" in twice
    with pytest.raises(OutputError, match="markers"):
        report.replace_section(f"{report.END}\n{report.START}\n", "## x", tmp_path)


# ----------------------------------------------------------------------------- the whole bench


@needs_colin27
@pytest.mark.slow  # a long end-to-end run: make test-all
def test_the_smoke_bench_writes_scores_report_and_figure_and_a_rerun_reuses_them(tmp_path, monkeypatch):
    # MS-SSIM of the paper protocol (a zero-padded 192³ region) takes seconds a call on one core and is
    # tested in test_metrics.py; here it is left out (n/a) to keep the test short.
    monkeypatch.setattr(metrics, "ms_ssim3d", lambda *args: None)
    out, docs, figure = tmp_path / "bench", tmp_path / "benchmarks.md", tmp_path / "figures" / "bench.png"
    docs.write_text("# Benchmarks\n\nEarlier text stays.\n")
    args = [
        "bench",
        "--budget",
        "smoke",
        "--out",
        str(out),
        "--methods",
        ",".join(SMOKE_METHODS),
        "--docs",
        str(docs),
        "--figure",
        str(figure),
        "--no-progress",
        "--threads",
        "1",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output

    results = json.loads((out / "results.json").read_text())
    assert results["budget"] == "smoke" and set(results["methods"]) == set(SMOKE_METHODS)
    for method, entry in results["methods"].items():
        assert set(entry["scans"]) == {"colin27-brain", "colin27"}
        for rows in entry["scans"].values():
            assert len(rows) == 1
            assert all(isinstance(rows[0][key], float) for key in ("psnr", "paper_psnr", "ssim", "seg_miou"))
        assert (out / "predictions" / method / "colin27.nii.gz").is_file()
    assert results["methods"]["unet"]["examples"] == results["methods"]["diffiqt"]["examples"] == 2
    assert results["methods"]["diffiqt"]["sampling"] == "refine × 1"
    assert results["methods"]["diffiqt-no-mean"]["sampling"] == "paper × 2"
    assert (
        results["methods"]["shipped"]["examples"] == 0 and "t1w-x8-lowfield" in results["methods"]["shipped"]["model"]
    )
    with (out / "results.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == len(SMOKE_METHODS) * 2
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = docs.read_text()
    assert text.count(report.START) == text.count(report.END) == 1 and "Earlier text stays." in text
    assert "](figures/bench.png)" in text and "| DiffusionIQT |" in text and "`diffiqt bench --budget smoke" in text
    assert "PSNR fit (dB)" in text

    trained = out / "runs" / "unet" / "train.csv"
    before = trained.stat().st_mtime_ns
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert trained.stat().st_mtime_ns == before  # finished runs are not trained again
    assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]
    assert docs.read_text().count(report.START) == 1


def test_a_bad_budget_is_one_line_and_exit_2(tmp_path):
    result = run_cli("bench", "--budget", "huge", "--out", tmp_path / "bench")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "unknown budget 'huge'" in result.stderr and not (tmp_path / "bench").exists()
