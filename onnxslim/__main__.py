"""``python -m onnxslim`` runs the command-line interface."""

from onnxslim.cli import main

main()
