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
)
