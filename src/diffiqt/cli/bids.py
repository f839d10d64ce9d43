"""BIDS mode of ``diffiqt enhance`` and ``diffiqt simulate``: a dataset's T1w scans in, derivatives out.

The layout is :mod:`diffiqt.imaging.bids`'s; this module runs the commands over it. A run goes in three stages:

1. Refusals that leave nothing to do (one line, exit 2, nothing written): no or unreadable
   ``dataset_description.json``, no T1w scan, a ``--participant-label``/``--session-label`` that matches
   nothing, an unfit ``--out``, an output that exists without all its siblings (give ``--force``).
2. Before any model loads: scans whose outputs all exist are skipped (``--force`` redoes them), each named
   on one line; scans that cannot be used (a name that is no BIDS name, a header that is no 3D image) are
   reported on one line each. If no scan is done or left to do, those lines are the error (exit 2).
3. The other scans are processed, each all-or-nothing; one that fails is reported and the others go on.
   The derivative's ``dataset_description.json`` is written with the first finished scan. If any scan was
   not processed the command ends with one more line and exit status 2, so that a script notices.

Under torchrun ``enhance`` splits the scans left after stage 2 between the processes, as folder mode does
(:func:`share`).
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import Progress, TaskID

from diffiqt.cli.common import console, print_enhance_notes, progress
from diffiqt.errors import ConfigError, DiffiqtError, InputError
from diffiqt.imaging import bids

if TYPE_CHECKING:  # torch is imported by the commands only when they work, so that --help stays fast
    from diffiqt.imaging.io import Volume
    from diffiqt.inference.enhance import EnhanceOptions
    from diffiqt.models.loading import Model
    from diffiqt.models.shipped import ModelRef
    from diffiqt.simulation import LowFieldParams

    ParamsFor = Callable[[Volume], LowFieldParams]


# How long a process under torchrun waits at the end for the others to finish their scans: longer than any
# run. Nothing else can keep a process waiting, since torchrun stops them all when one of them dies.
WAIT_FOR_OTHERS = datetime.timedelta(days=7)


def bids_mode(source: Path, participants: list[str], sessions: list[str]) -> bool:
    """Is ``source`` to be read as a BIDS dataset? InputError for a folder of ``sub-*`` folders without its
    ``dataset_description.json``, ConfigError for label filters on anything else."""
    if bids.is_dataset(source):
        return True
    if bids.looks_like_dataset(source):
        bids.read_dataset(source)  # raises: the description is missing
    if participants or sessions:
        raise ConfigError(
            f"{source}: --participant-label and --session-label select scans of a BIDS dataset, "
            f"and this is none (no {bids.DESCRIPTION})"
        )
    return False


@dataclass
class Job:
    """One scan and the derivative files it gives: (image, sidecar) per ``desc``, all or none of them."""

    scan: bids.Scan
    out: Path
    descs: tuple[str, ...]

    def image(self, desc: str) -> Path:
        return self.out / self.scan.derivative(desc)

    def sidecar(self, desc: str) -> Path:
        return self.out / self.scan.derivative(desc, ".json")

    @property
    def files(self) -> list[Path]:
        return [path for desc in self.descs for path in (self.image(desc), self.sidecar(desc))]


@dataclass
class Plan:
    """What a run over a dataset will do: the scans left to process, those done earlier and the problems found."""

    dataset: bids.Dataset
    out: Path
    jobs: list[Job]
    finished: list[Job]
    problems: list[str]
    total: int  # selected T1w files: done, to do, or with a problem


def plan(
    source: Path, out: Path, descs: tuple[str, ...], participants: list[str], sessions: list[str], force: bool
) -> Plan:
    """Stages 1 and 2 of the module docstring: everything checked before the work (:func:`report` tells it)."""
    from diffiqt.imaging.io import check_image, check_outputs

    dataset = bids.read_dataset(source)
    bids.check_output_root(dataset, out)
    participants, sessions = bids.labels(participants, "sub"), bids.labels(sessions, "ses")
    found, bad_names = bids.find_t1w(dataset)
    if bad_names and not found:  # what the user must fix, rather than "no T1w scans"
        refuse([str(p) for p in bad_names])
    selected = bids.select(dataset, found, participants, sessions)
    problems = [str(p) for p in bad_names if bids.in_selection(p.relpath, participants, sessions)]
    total = len(selected) + len(problems)
    todo, finished = [], []
    for job in (Job(scan, out, descs) for scan in selected):
        if not force and all(path.exists() for path in job.files):
            finished.append(job)
            continue
        try:
            check_image(job.scan.path)
        except InputError as exc:
            problems.append(str(exc))
            continue
        todo.append(job)
    check_outputs(
        [(path, str(job.scan.relpath)) for job in todo for path in job.files],
        [scan.path for scan in found],
        force=force,
    )
    if problems and not todo and not finished:
        refuse(problems)
    return Plan(dataset, out, todo, finished, problems, total)


def report(plan: Plan) -> None:
    """One line for each scan done earlier and each problem; after :func:`plan`, so that a refusal there is the
    one line printed."""
    for job in plan.finished:
        say("skipped", f"{job.scan.relpath}: its outputs exist (--force redoes it)")
    for problem in plan.problems:
        say("[red]skipped[/red]", problem)


def share(plan: Plan, rank: int, world: int) -> Plan:
    """The part of ``plan`` that process ``rank`` of ``world`` (under torchrun) does and answers for: every
    world-th job, and on rank 0 also the scans done earlier and the problems, so that each is reported once.

    A process's closing count (``N of M T1w scans were not processed``) is then of the scans it answers for,
    M of them: it follows the lines that process printed ("see above"), and the counts of all processes add
    up to the dataset's. Alone (``world`` 1) a process answers for everything, as without torchrun.
    """
    jobs = plan.jobs[rank::world]
    if rank == 0:
        return replace(plan, jobs=jobs, total=plan.total - len(plan.jobs) + len(jobs))
    return replace(plan, jobs=jobs, finished=[], problems=[], total=len(jobs))


def say(tag: str, message: str) -> None:
    """``tag`` (rich markup) and ``message`` (plain: a path may hold brackets) on one line of stderr, however long."""
    from rich.markup import escape

    console.print(f"{tag} {escape(message)}", soft_wrap=True)


def refuse(problems: list[str]) -> None:
    """Nothing can be done: every problem is one error line, the last raised so that the exit status is 2."""
    for problem in problems[:-1]:
        print(f"diffiqt: error: {problem}", file=sys.stderr)
    raise InputError(problems[-1])


def all_done(plan: Plan, what: str) -> None:
    """No scan is left to process: each selected scan was done by an earlier run or has a problem (reported).

    The derivative's description (``what`` the pipeline did) is written only if it is missing; exit
    status 2 if a scan has a problem, as after a run that met it.
    """
    from diffiqt import __version__

    bids.write_description(plan.dataset, plan.out, __version__, what)
    done = plan.total - len(plan.problems)
    say("nothing to do:", f"the outputs of {done} of the {plan.total} selected T1w scans exist in {plan.out}")
    check_failures(plan, plan.problems)


def run_jobs(plan: Plan, what: str, work: Callable[[Job, int, Progress], None]) -> list[str]:
    """Stage 3: ``work(job, index, bar)`` for every job, a failure reported and passed over; the plan's problems
    and the failures (give them to :func:`check_failures`).

    The derivative's description (``what`` the pipeline did) is written with the first finished scan
    (:func:`diffiqt.imaging.bids.write_description` leaves one that exists), so that a run in which every scan
    fails leaves nothing behind. Processes under torchrun may write it at the same time: it is written
    atomically (a temporary file renamed into place), the same bytes by each, so it is never torn.
    """
    from diffiqt import __version__

    failures = list(plan.problems)
    with progress() as bar:
        for index, job in enumerate(plan.jobs):
            try:
                work(job, index, bar)
            except DiffiqtError as exc:
                failures.append(f"{job.scan.relpath}: {exc}")
                say("[red]skipped[/red]", f"{job.scan.relpath}: {exc}")
                continue
            bids.write_description(plan.dataset, plan.out, __version__, what)
    return failures


def check_failures(plan: Plan, failures: list[str]) -> None:
    """The closing line and exit status 2 if a scan of ``plan`` was not processed, so that a script notices."""
    if failures:
        raise InputError(f"{len(failures)} of {plan.total} T1w scans were not processed (see above)")


def enhance_dataset(
    source: Path,
    out: Path,
    ref: ModelRef,
    options: EnhanceOptions,
    *,
    png: bool,
    force: bool,
    participants: list[str],
    sessions: list[str],
) -> None:
    """``diffiqt enhance BIDS_ROOT -o OUT``: ``desc-enhanced`` (and ``desc-sd`` with samples > 1) per T1w scan.

    ``ref`` is the resolved model (:class:`diffiqt.models.shipped.ModelRef`) and ``options`` the sampler's
    :class:`~diffiqt.inference.enhance.EnhanceOptions` (``steps`` None: the model's own). Under torchrun each
    process enhances its :func:`share` of the scans.
    """
    import torch

    from diffiqt.models.loading import load_model
    from diffiqt.training import distributed

    if png:
        raise ConfigError("--png is not available for BIDS datasets (a montage is no BIDS derivative)")
    descs = (bids.DESC_ENHANCED,) + ((bids.DESC_SD,) if options.samples > 1 else ())
    work = plan(source, out, descs, participants, sessions, force)
    # As in folder mode (cli/enhance.py): the split follows the process group, not RANK/WORLD_SIZE alone, so
    # that a stray RANK in the environment leaves one process that enhances every scan; joining after the
    # plan (with a barrier) keeps one process's new outputs from failing another's checks.
    distributed.init(torch.device(options.device).type, timeout=WAIT_FOR_OTHERS)
    distributed.barrier()
    try:
        mine = share(work, distributed.rank(), distributed.world_size())
        report(mine)
        if not work.jobs:  # the same plan in every process: none has work, and rank 0 says so
            if distributed.is_main():
                all_done(mine, "enhancement")
            return
        model = load_model(ref.name if ref.name is not None else ref.path)
        options = replace(options, steps=options.steps_for(model))
        failures = run_jobs(
            mine,
            "enhancement",
            lambda job, index, bar: _enhance_scan(job, f"({index + 1}/{len(mine.jobs)})", model, ref, options, bar),
        )
        # torchrun stops every process as soon as one exits with an error: one whose scans failed waits
        # here until the others are done with theirs.
        distributed.barrier()
        check_failures(mine, failures)
    finally:
        distributed.close()
    print_enhance_notes(model, options)


def _enhance_scan(job: Job, count: str, model: Model, ref: ModelRef, options: EnhanceOptions, bar: Progress) -> None:
    """Enhance one scan into its ``desc-enhanced`` (and ``desc-sd``) images and sidecars, all or none of them."""
    from diffiqt import __version__
    from diffiqt.imaging.io import OutputGroup, load_volume, save_json, save_volume
    from diffiqt.inference.enhance import enhance, slice_axis

    lf = load_volume(job.scan.path)
    tasks: list[TaskID] = []  # created at the first step, so that a scan refused before sampling leaves no empty bar

    def on_step(i: int) -> None:
        if not tasks:
            tasks.append(bar.add_task(f"enhancing {job.scan.relpath} {count}", total=options.steps))
        bar.update(tasks[0], completed=i + 1)

    result = enhance(lf, model, options, on_step=on_step)
    # The model as resolved (a shipped name and its weights' SHA-256, or a path), as plain enhance records it.
    common = {
        "Sources": [job.scan.uri],
        "diffiqt_version": __version__,
        **result.info,
        "resolved_model": asdict(ref),
        "lowfield_geometry": bids.lowfield_geometry(lf, slice_axis(lf)),
    }
    images = [
        (
            bids.DESC_ENHANCED,
            result.mean,
            f"DiffusionIQT enhancement: the mean of {options.samples} sample(s), on the model's isotropic grid",
        ),
        (
            bids.DESC_SD,
            result.std,
            f"per-voxel standard deviation of the {options.samples} samples whose mean is desc-enhanced (uncertainty)",
        ),
    ]
    with OutputGroup() as written:
        for desc, volume, description in images:
            if volume is not None:  # no desc-sd from a single sample
                written.add(save_volume(volume, job.image(desc), inputs=[job.scan.path]))
                written.add(save_json({"Description": description, **common}, job.sidecar(desc)))


def simulate_dataset(
    source: Path,
    out: Path,
    params: ParamsFor,
    seed: int,
    *,
    upsample: bool,
    png: bool,
    force: bool,
    participants: list[str],
    sessions: list[str],
) -> None:
    """``diffiqt simulate BIDS_ROOT -o OUT``: ``desc-lowfield`` (and ``desc-lowfieldupsampled``) per T1w scan.

    ``params(t1)`` gives the :class:`~diffiqt.simulation.LowFieldParams` for a high-field volume; each scan's
    random stream depends on ``seed`` and its file name, as in folder mode.
    """
    if png:
        raise ConfigError("--png is not available for BIDS datasets (a montage is no BIDS derivative)")
    descs = (bids.DESC_LOWFIELD,) + ((bids.DESC_UPSAMPLED,) if upsample else ())
    work = plan(source, out, descs, participants, sessions, force)
    report(work)
    if not work.jobs:
        return all_done(work, "low-field simulation")
    task: list[TaskID] = []  # the bar's task, added when the bar is up

    def simulate_scan(job: Job, index: int, bar: Progress) -> None:
        if not task:
            task.append(bar.add_task("simulating", total=len(work.jobs)))
        try:
            _simulate_scan(job, params, seed, upsample)
        finally:
            bar.advance(task[0])

    check_failures(work, run_jobs(work, "low-field simulation", simulate_scan))


def _simulate_scan(job: Job, params: ParamsFor, seed: int, upsample: bool) -> None:
    """Simulate one scan's ``desc-lowfield`` (and ``desc-lowfieldupsampled``) images and sidecars, all or none."""
    from diffiqt import __version__
    from diffiqt.anatomy.brains import load_user_volume
    from diffiqt.cli.common import seed_for
    from diffiqt.imaging.io import OutputGroup, save_json, save_volume
    from diffiqt.simulation import simulate_low_field

    sample = load_user_volume(job.scan.path)
    chosen = params(sample.t1)
    result = simulate_low_field(
        sample.t1, sample.tissues, chosen, seed_for(seed, job.scan.path.name), upsample=upsample
    )
    common = {
        "Sources": [job.scan.uri],
        "diffiqt_version": __version__,
        "seed": seed,
        **result.info,
        "lowfield_geometry": bids.lowfield_geometry(result.lf, chosen.axis),
    }
    with OutputGroup() as written:
        written.add(save_volume(result.lf, job.image(bids.DESC_LOWFIELD), inputs=[job.scan.path]))
        written.add(
            save_json(
                {"Description": "simulated low-field T1w on its thick-slice grid (Lin et al. 2023)", **common},
                job.sidecar(bids.DESC_LOWFIELD),
            )
        )
        if result.lf_on_hf is not None:
            written.add(save_volume(result.lf_on_hf, job.image(bids.DESC_UPSAMPLED), inputs=[job.scan.path]))
            written.add(
                save_json(
                    {"Description": "the desc-lowfield scan resampled (cubic) onto the high-field grid", **common},
                    job.sidecar(bids.DESC_UPSAMPLED),
                )
            )
