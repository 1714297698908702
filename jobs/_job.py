"""What every ``jobs/*.py`` shares: make the shipped working directory importable and run one
``clipsep-ray`` command with the script's arguments, exiting with its status."""
import os
import sys


def run(command: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # --working-dir .
    from clipsep_ray.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
