"""``diffiqt enhance A B [C] -o OUT``: several scans of one session enhanced and fused into one volume."""

from __future__ import annotations

from pathlib import Path


def enhance_fused(
    sources: list[Path], out: Path, ref, options, method: str, register: bool, png: bool, force: bool
) -> None:
    """Enhance every scan of ``sources`` with the model ``ref`` and write their fusion (:mod:`diffiqt.inference.fusion`)
    to ``out``, its uncertainty map to ``*_std`` and a JSON sidecar (all or none of them)."""
    from dataclasses import asdict

    from diffiqt import __version__
    from diffiqt.cli.common import console, progress
    from diffiqt.errors import InputError
    from diffiqt.evaluation.figures import montage
    from diffiqt.imaging.io import (
        OutputGroup,
        check_output_path,
        check_outputs,
        load_volume,
        save_json,
        save_volume,
        sibling_path,
    )
    from diffiqt.inference.fusion import METHODS, FusionOptions, check_scans, enhance_and_fuse
    from diffiqt.models.loading import load_model

    if method not in METHODS:
        raise InputError(f"unknown --fusion {method!r}; choose from {', '.join(METHODS)}")
    if any(path.is_dir() for path in sources):
        raise InputError("several sources are fused into one volume: give scan files, not folders")
    if len({path.resolve() for path in sources}) < len(sources):
        raise InputError("the same scan is given twice: fusion needs different scans of one session")
    if len(sources) > 3:
        raise InputError(f"{len(sources)} scans: fusion takes 2 or 3 scans of one session")
    target = check_output_path(out, sources)
    std_path, json_path, png_path = (
        sibling_path(target, "_std"),
        sibling_path(target, "", ".json"),
        sibling_path(target, "_montage", ".png"),
    )
    check_outputs(
        [(p, "the fusion") for p in [target, std_path, json_path] + ([png_path] if png else [])], sources, force=force
    )
    scans = [load_volume(path) for path in sources]
    check_scans(scans)  # before the model loads: a wrong set of files costs nothing
    model = load_model(ref.name if ref.name is not None else ref.path)
    with progress() as bar:

        def on_scan(index: int):
            task = bar.add_task(f"enhancing {sources[index].name}", total=options.steps or model.steps)
            return lambda i: bar.update(task, completed=i + 1)

        result = enhance_and_fuse(scans, model, options, FusionOptions(method, register), on_scan)
    with OutputGroup() as written:
        written.add(save_volume(result.mean, target, inputs=sources))
        written.add(save_volume(result.std, std_path, inputs=sources))
        if png:
            panels = [(f"low field: {p.name}", scan) for p, scan in zip(sources, scans)]
            panels += [("fused", result.mean), ("disagreement (sd)", result.std)]
            written.add(montage(panels, png_path, title=" + ".join(p.name for p in sources)))
        written.add(
            save_json(
                {
                    "diffiqt_version": __version__,
                    "inputs": [str(p) for p in sources],
                    **result.info,
                    "model": model.description,
                    "steps": options.steps or model.steps,
                    "sampler": options.sampler,
                    "samples": options.samples,
                    "seed": options.seed,
                    "resolved_model": asdict(ref),
                    "outputs": [str(p) for p in written.paths],
                },
                json_path,
            )
        )
    if model.warning:
        console.print(f"[yellow]note:[/yellow] {model.warning}")
