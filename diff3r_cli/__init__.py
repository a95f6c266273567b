"""diff3r: feed-forward 3D Gaussian Splatting with uncertainty-aware differentiable optimization.

Importing the package changes nothing in the process (the CLI entry, diff3r_cli.cli.entry, sets
its own process-wide options such as the OpenMP wait policy).
"""

__version__ = "0.1.0"
