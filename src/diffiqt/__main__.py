"""``python -m diffiqt`` runs the command-line interface."""

from diffiqt.cli import main

main()
