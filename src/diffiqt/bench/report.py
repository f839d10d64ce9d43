"""The report of ``diffiqt bench``: a Markdown section (tables, the paper's ordering beside ours) and a figure.

The section goes into ``OUT/report.md`` and, with ``docs``, replaces the part of a docs file between
:data:`START` and :data:`END` (appended with them the first time). The figure follows the paper's
Figure 2: one coronal slice of the low-field input, every method and the ground truth, a zoomed inset,
and the error maps |prediction − truth| underneath, for each test scan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from diffiqt.bench.compare import BUDGETS, METHODS, peer
from diffiqt.errors import OutputError
from diffiqt.imaging.io import Volume, atomic_write

START, END = "<!-- bench:start -->", "<!-- bench:end -->"

# Kim et al. 2023 on 20 HCP test subjects: Table 1 (PSNR, MS-SSIM, parcellation mIoU) and Table 2 (ablations).
PAPER = {
    "interpolation": {"psnr": 22.4, "ms_ssim": 0.805, "miou": 0.488},
    "unet": {"psnr": 26.2, "ms_ssim": 0.907, "miou": 0.670},
    "resunet": {"psnr": 26.1, "ms_ssim": 0.871, "miou": 0.751},
    "esrgan": {"psnr": 29.7, "ms_ssim": 0.940, "miou": 0.749},
    "diffiqt": {"psnr": 33.7, "ms_ssim": 0.968, "miou": 0.858},
    "no-crossbatch": {"psnr": 31.5, "ms_ssim": 0.948},
    "no-deepfeature-no-crossbatch": {"psnr": 26.4, "ms_ssim": 0.848},
}
# Scores of the per-scan tables: (key, column title, decimals). All are higher-is-better.
SCORES = (
    ("paper_psnr", "PSNR paper (dB)", 2),
    ("paper_ms_ssim", "MS-SSIM paper", 4),
    ("psnr", "PSNR strict (dB)", 2),
    ("ssim", "SSIM strict", 4),
    ("ms_ssim", "MS-SSIM strict", 4),
    ("fit_psnr", "PSNR fit (dB)", 2),
    ("fit_ssim", "SSIM fit", 4),
    ("seg_miou", "tissue mIoU", 3),
)
SCORE_NAMES = {
    "paper_psnr": "PSNR (paper protocol)",
    "paper_ms_ssim": "MS-SSIM (paper protocol)",
    "psnr": "PSNR (strict)",
    "ssim": "SSIM (strict)",
    "ms_ssim": "MS-SSIM (strict)",
    "fit_psnr": "PSNR (fit)",
    "fit_ssim": "SSIM (fit)",
    "seg_miou": "tissue mIoU",
}
# The ordering table: (the paper's score, our scores ordered beside it).
ORDERINGS = (("psnr", ("paper_psnr", "psnr", "fit_psnr")), ("ms_ssim", ("paper_ms_ssim",)), ("miou", ("seg_miou",)))
PAPER_NAMES = {"psnr": "PSNR", "ms_ssim": "MS-SSIM", "miou": "parcellation mIoU"}
SCAN_TITLES = {"colin27-brain": "Colin27, skull-stripped", "colin27": "Colin27, whole head"}
VIEW = "coronal"  # the x8 axial slices show as steps along the vertical axis


# ----------------------------------------------------------------------------- numbers


def entries(results: dict) -> list[tuple[str, dict]]:
    """(method, its results) in the report's order (results.json keeps its keys sorted)."""
    return [(method, results["methods"][method]) for method in METHODS if method in results["methods"]]


def values(entry: dict, scan: str, key: str) -> list[float]:
    """The score ``key`` of every sampler seed on ``scan`` (missing scores left out)."""
    return [row[key] for row in entry["scans"].get(scan, []) if row.get(key) is not None]


def pooled(entry: dict, scans: list[str], key: str) -> list[float]:
    """One scan: its seeds' scores. Several: each scan's mean over its seeds."""
    if len(scans) == 1:
        return values(entry, scans[0], key)
    return [float(np.mean(v)) for v in (values(entry, scan, key) for scan in scans) if v]


def mean_sd(numbers: list[float], decimals: int, spread: bool = True) -> str:
    """'31.20 ± 0.30' over several numbers (the mean alone without ``spread``), '31.20' for one, 'n/a' for none."""
    if not numbers:
        return "n/a"
    text = f"{np.mean(numbers):.{decimals}f}"
    return f"{text} ± {np.std(numbers):.{decimals}f}" if spread and len(numbers) > 1 else text


def overall(entry: dict, key: str) -> float | None:
    """Mean over the test scans of the per-scan mean (None if no scan has the score)."""
    means = pooled(entry, list(entry["scans"]), key)
    return float(np.mean(means)) if means else None


def ranked(scores: dict[str, float | None]) -> list[str]:
    """Methods with a score, best (highest) first."""
    present = {m: v for m, v in scores.items() if v is not None}
    return sorted(present, key=lambda m: -present[m])


def concordant_pairs(paper: list[str], ours: list[str]) -> tuple[int, int]:
    """(pairs of methods ordered alike, pairs compared) among the methods both orderings rank."""
    common = [m for m in paper if m in ours]
    pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1 :]]
    return sum(ours.index(a) < ours.index(b) for a, b in pairs), len(pairs)


# ----------------------------------------------------------------------------- Markdown


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table: the first ``left`` columns left-aligned (text), the others right-aligned (numbers)."""
    align = ["---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def count(parameters: int) -> str:
    """12.35M, 4.8k or 0."""
    return f"{parameters / 1e6:.2f}M" if parameters >= 100_000 else f"{parameters / 1e3:.1f}k" if parameters else "0"


def networks_table(results: dict) -> str:
    from diffiqt.nets import paper_parameters_m

    rows = []
    paper_budget = BUDGETS["paper"]
    for method, entry in entries(results):
        in_paper = method in paper_budget.networks and not peer(paper_budget, method)
        paper_m = paper_parameters_m(paper_budget.networks[method][0]) if in_paper else None
        settings = f"`{json.dumps(entry['settings'])}`" if entry["settings"] else "–"
        if entry.get("model"):  # a shipped model: which one it was
            settings = f"{settings}: {entry['model']}"
        rows.append(
            [
                entry["label"],
                f"`{entry['network']}`",
                settings,
                count(entry["parameters"]),
                f"{paper_m}M" if paper_m else "–",
                f"{entry['examples']:,}" if entry["examples"] else "–",
                entry.get("sampling", "–"),
            ]
        )
    header = ["method", "network", "settings", "parameters", "paper", "training blocks", "sampling"]
    return table(header, rows, left=3)


def scan_table(results: dict, scans: list[str]) -> str:
    """One row per method: mean ± sd over the sampler seeds of one scan, or over the means of several scans."""
    rows = []
    for _, entry in entries(results):
        dice = "/".join(mean_sd(pooled(entry, scans, f"dice_{c}"), 3, spread=False) for c in ("csf", "gm", "wm"))
        train = f"{entry['train_s'] / 60:.1f}" if entry["train_s"] is not None else "–"
        rows.append(
            [
                entry["label"],
                count(entry["parameters"]),
                train,
                mean_sd(pooled(entry, scans, "inference_s"), 1),
                *[mean_sd(pooled(entry, scans, key), decimals) for key, _, decimals in SCORES],
                dice,
            ]
        )
    header = [
        "method",
        "params",
        "train (min)",
        "inference (s/volume)",
        *[title for _, title, _ in SCORES],
        "Dice CSF/GM/WM (mean)",
    ]
    return table(header, rows)


def ordering_table(results: dict) -> str:
    """Rank by rank, the paper's ordering of the methods run here beside ours, and how many pairs agree."""
    methods = {m: entry for m, entry in entries(results) if m in PAPER}  # the paper's methods: linear IQT is ours
    columns, agreement = [], []
    for paper_key, our_keys in ORDERINGS:
        paper = ranked({m: PAPER[m].get(paper_key) for m in methods})
        columns.append((f"paper: {PAPER_NAMES[paper_key]}", [f"{METHODS[m]} {PAPER[m][paper_key]}" for m in paper]))
        agreement.append("")
        for key in our_keys:
            scores = {m: overall(entry, key) for m, entry in methods.items()}
            ours = ranked(scores)
            columns.append((f"ours: {SCORE_NAMES[key]}", [f"{METHODS[m]} {scores[m]:.3g}" for m in ours]))
            same, pairs = concordant_pairs(paper, ours)
            agreement.append(f"{same} of {pairs} pairs as in the paper" if pairs else "n/a")
    depth = max(len(cells) for _, cells in columns)
    rows = [
        [str(rank + 1)] + [cells[rank] if rank < len(cells) else "" for _, cells in columns] for rank in range(depth)
    ]
    return table(["rank", *[title for title, _ in columns]], rows + [["agreement", *agreement]], left=len(columns) + 1)


def honest_sentence(results: dict) -> str:
    """Where DiffusionIQT does not beat another method (mean over the test scans), said plainly."""
    methods = dict(entries(results))
    if "diffiqt" not in methods:
        return "DiffusionIQT was not run, so nothing is compared with it."
    ours = {key: overall(methods["diffiqt"], key) for key, _, _ in SCORES}
    losses = []
    for method, entry in methods.items():
        theirs = {key: overall(entry, key) for key in ours}
        lost = [
            f"{SCORE_NAMES[key]} {mine:.3g} vs {other:.3g}"
            for key in ours
            if method != "diffiqt"
            and (mine := ours[key]) is not None
            and (other := theirs[key]) is not None
            and other >= mine
        ]
        if lost:
            losses.append(f"{entry['label']} on {', '.join(lost)}")
    if not losses:
        return "At this budget DiffusionIQT beats every other method run here on every score above."
    return (
        "At this budget DiffusionIQT does **not** beat "
        + "; ".join(losses)
        + " (DiffusionIQT's score first; means over the test scans)."
    )


def markdown(results: dict, figure_link: str | None) -> str:
    """The report section (without markers); ``figure_link`` is the figure's path relative to the document."""
    settings = results["settings"]
    split = results["split"]
    block = settings["block_size"]
    parts = [
        f"## Table 1 and Table 2 at an equal training budget (`{results['budget']}`)",
        f"`{results['command']}`\n\nRevision `{results['revision']}` · {results['machine']}",
        f"**Budget `{results['budget']}`**: {settings['summary']}. Every trained method: {settings['steps']:,} steps "
        f"× {settings['batch_size']} block(s) of {block}³ voxels = {settings['steps'] * settings['batch_size']:,} "
        f"training examples, the `{settings['preset']}` preset's optimizer and data pipeline, seed {settings['seed']} "
        f"(the same blocks and noise for all); {_sampling_text(settings)}, {settings['samples']} seed(s) per test "
        "scan.",
        f"**Split**: training {', '.join(split['train'])} (torchio-augmented pseudo-subjects); validation "
        f"{split['validation']}; test {', '.join(split['test'])} (another real subject, never trained or validated "
        f"on; x{results['lf_factor']} low-field simulation, axial slices, seed {results['test_seed']}, the same scan "
        f"for every method){_region_text(settings)}.",
        "### Networks\n\n" + networks_table(results),
    ]
    scans = [scan for scan in split["test"] if any(scan in entry["scans"] for _, entry in entries(results))]
    parts += [f"### {SCAN_TITLES.get(scan, scan)} (`{scan}`)\n\n" + scan_table(results, [scan]) for scan in scans]
    if len(scans) > 1:
        parts.append("### All test scans (mean ± sd over the scans)\n\n" + scan_table(results, scans))
    parts += [
        "### Ordering: the paper's Tables 1 and 2 beside this bench\n\n" + ordering_table(results),
        honest_sentence(results),
    ]
    if figure_link:
        parts.append(
            f"![Figure 2 of the paper, redone: {VIEW} slice, zoomed inset, |prediction − truth| below]({figure_link})"
        )
    parts.append("Notes:\n\n" + "\n".join(f"- {note}" for note in [*settings["notes"], *NOTES]))
    return "\n\n".join(parts) + "\n"


def _sampling_text(settings: dict) -> str:
    if settings["sample_steps"] is None:
        return "diffusion methods sample with their own recipe's sampler and steps (column `sampling`)"
    return f"diffusion methods sample with {settings['sample_steps']} steps"


def _region_text(settings: dict) -> str:
    region = settings["test_region"]
    return f"; only the central {region}³ cube of each test volume is enhanced and scored" if region else ""


NOTES = (
    "Paper protocol: the central 192³ region (zero-padded where the volume is smaller), the prediction clipped at "
    "0, each volume min-max scaled to [0, 1]; strict protocol: the truth's intensity range, the prediction "
    "clipped at 0, PSNR inside the brain mask, SSIM and MS-SSIM on its bounding box (MS-SSIM n/a below 97 voxels "
    "a side); fit protocol: as strict after one gain and offset per prediction fitted to the truth inside the "
    "brain (no MS-SSIM). See `diffiqt.evaluation.metrics`.",
    "Tissue Dice and mIoU compare 3-class (CSF/GM/WM) Gaussian-mixture segmentations of prediction and truth (EM on "
    "the prediction starts from the truth's fitted mixture, so that a low-contrast prediction cannot end with two "
    "components on one peak and no white matter); the "
    "paper's mIoU is over 95 FastSurfer parcellation classes, so only orderings compare, not values. LPIPS needs "
    "pretrained weights that are not available offline and is left out.",
    "3D ESRGAN's generator trains with the reconstruction loss only (MSE, as every method here); its adversarial "
    "and perceptual terms are not used.",
    "Training time: wall time of the training steps, data simulation included, as logged in `train.csv`. Inference: "
    "`diffiqt.inference.enhance.enhance` on the low-field scan, per volume and sampler seed. ± is the standard deviation "
    "over sampler seeds (one scan) or over the test scans (all scans). The ordering uses the mean over the test "
    "scans.",
)


# ----------------------------------------------------------------------------- files


def replace_section(text: str, section: str, where: Path) -> str:
    """``text`` with the part between the markers replaced by ``section``, or the marked section appended."""
    block = f"{START}\n{section.strip()}\n{END}"
    begin, end = text.find(START), text.find(END)
    if begin < 0 and end < 0:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"
    if begin < 0 or end < begin or text.count(START) > 1:
        raise OutputError(f"{where}: the markers {START} ... {END} are incomplete, repeated or out of order")
    return text[:begin] + block + text[end + len(END) :]


def write(
    results: dict,
    scans: list,
    predictions: dict[str, dict[str, Path]],
    out: Path,
    *,
    docs: Path | None = None,
    figure: Path | None = None,
) -> list[Path]:
    """OUT/report.md, the figure (default OUT/bench.png) and, with ``docs``, its marked section; returns the paths."""
    figure = Path(figure) if figure is not None else out / "bench.png"
    comparison_figure(scans, predictions, figure)
    report = out / "report.md"
    atomic_write(report, lambda tmp: tmp.write_text(markdown(results, os.path.relpath(figure, out))))
    written = [report, figure]
    if docs is not None:
        docs = Path(docs)
        text = docs.read_text() if docs.exists() else ""
        updated = replace_section(text, markdown(results, os.path.relpath(figure, docs.parent)), docs)
        atomic_write(docs, lambda tmp: tmp.write_text(updated))
        written.append(docs)
    return written


# ----------------------------------------------------------------------------- figure


def comparison_figure(scans: list, predictions: dict[str, dict[str, Path]], path: Path) -> Path:
    """Per test scan: the low-field scan, every method, the truth (zoomed inset), and |error| maps below."""
    import matplotlib.pyplot as plt

    from diffiqt.imaging.io import load_volume
    from diffiqt.imaging.resample import resample

    columns = len(predictions) + 2
    fig, axes = plt.subplots(2 * len(scans), columns, figsize=(2.1 * columns, 2.3 * 2 * len(scans)), squeeze=False)
    for index, scan in enumerate(scans):
        acquired = resample(scan.lf, scan.hf.affine, scan.hf.shape, order=0)  # thick slices as blocks, edges kept
        panels = [("low field (x8)", acquired)]
        panels += [(METHODS[m], load_volume(files[scan.name])) for m, files in predictions.items()]
        panels.append(("ground truth", scan.hf))
        draw_scan(axes[2 * index], axes[2 * index + 1], panels, scan)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def draw_scan(image_row, error_row, panels: list[tuple[str, Volume]], scan) -> None:
    """One slice through the brain's centre for every panel, sampled on the truth's grid, and its error map."""
    from diffiqt.evaluation.figures import view_slice

    centre = scan.hf.voxel_to_world(np.argwhere(scan.brain).mean(axis=0))
    planes = {name: view_slice(volume, centre, VIEW, scan.hf) for name, volume in panels}
    truth = planes["ground truth"]
    brain = view_slice(scan.hf.with_data(scan.brain.astype(np.float32)), centre, VIEW, scan.hf) > 0.5
    bright = float(np.percentile(truth[brain], 99.5))
    errors = {name: np.abs(plane - truth) for name, plane in planes.items()}
    error_top = float(np.percentile(errors[panels[0][0]][brain], 99)) or 1.0  # the low-field scan's sets the scale
    zoom = zoom_box(brain)
    for column, (name, plane) in enumerate(planes.items()):
        show(image_row[column], plane, "gray", bright, zoom)
        image_row[column].set_title(name, fontsize=8)
        if name == "ground truth":
            error_row[column].axis("off")
        else:
            show(error_row[column], errors[name], "magma", error_top, None)
    image_row[0].set_ylabel(SCAN_TITLES.get(scan.name, scan.name), fontsize=8)
    error_row[0].set_ylabel("|prediction − truth|", fontsize=8)


def zoom_box(brain: np.ndarray) -> tuple[float, float, float]:
    """(row, column, half size) of a square around the brain's centre in the slice: ventricles and sulci."""
    rows, cols = np.nonzero(brain)
    return float(rows.mean()), float(cols.mean()), max(4.0, min(brain.shape) / 8)


def show(ax, plane: np.ndarray, cmap: str, top: float, zoom: tuple[float, float, float] | None) -> None:
    """An image panel from 0 to ``top``; with ``zoom``, an inset magnifying that square (outlined)."""
    ax.imshow(plane, cmap=cmap, vmin=0, vmax=top)
    ax.set_xticks([])
    ax.set_yticks([])
    if zoom is None:
        return
    row, col, half = zoom
    inset = ax.inset_axes([0.6, 0.0, 0.4, 0.4])
    inset.imshow(plane, cmap=cmap, vmin=0, vmax=top)
    inset.set_xlim(col - half, col + half)
    inset.set_ylim(row + half, row - half)
    inset.set_xticks([])
    inset.set_yticks([])
    ax.indicate_inset_zoom(inset, edgecolor="yellow")
