"""diff3r: feed-forward 3D Gaussian Splatting with uncertainty-aware differentiable optimization."""

import os as _os

# OpenMP's default spin-waiting makes 2 threads 2-3x slower than 1 on a busy CPU (measured with
# benchmarks/render.py); passive waiting costs nothing when the machine is idle. Must be set
# before torch is imported, hence here. Users can still override it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
