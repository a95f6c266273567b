"""diff3r: feed-forward 3D Gaussian Splatting with uncertainty-aware differentiable optimization."""

__version__ = "0.1.0"
