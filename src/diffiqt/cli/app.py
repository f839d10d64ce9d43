"""The typer application that every command module registers itself on."""

import typer

app = typer.Typer(
    name="diffiqt",
    help=(
        "Low-field brain MRI enhancement with a 3D conditional diffusion model (DiffusionIQT).\n\n"
        "Typical flow: `diffiqt simulate` makes low-field training pairs from high-field NIfTI files, "
        "`diffiqt train` fits a model, `diffiqt enhance` turns a low-field scan into a high-field-like "
        "volume, `diffiqt evaluate` scores it. Run `diffiqt COMMAND --help` for each."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # click's contexts pass it on to every command
)


def _print_version(value: bool) -> None:
    if value:
        from diffiqt import __version__

        typer.echo(f"diffiqt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Low-field brain MRI enhancement with a 3D conditional diffusion model (DiffusionIQT)."""
