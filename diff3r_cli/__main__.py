"""`python -m diff3r_cli` entry point (torchrun needs a module to run)."""

from diff3r_cli.cli import main

if __name__ == "__main__":
    main()
