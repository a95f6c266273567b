"""Classical multi-view depth shared by reconstruction, training targets and refinement."""

from diff3r_cli.depth.covisible import COVISIBLE_SCALE, anchor_weights, covisible
from diff3r_cli.depth.fuse import floaters
from diff3r_cli.depth.stage import MatchedPrediction, match_depth, photo_range, predict_matched
from diff3r_cli.depth.pixel_gaussians import sparse_depth_error, view_depths, with_depths
from diff3r_cli.depth.sweep import SweepConfig, SweepResult, sweep_depth

__all__ = ["COVISIBLE_SCALE", "anchor_weights", "covisible", "MatchedPrediction", "match_depth", "photo_range", "predict_matched", "floaters", "SweepConfig", "SweepResult", "sweep_depth", "view_depths", "with_depths", "sparse_depth_error"]
