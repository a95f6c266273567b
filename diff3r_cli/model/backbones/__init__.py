"""Released feed-forward 3DGS backbones re-implemented to load the authors' files strictly
(MVSplat), each wrapped as a diff3r predictor with a Λ head of ours on top."""

from diff3r_cli.model.backbones.predictor import BackboneConfig, BackbonePredictor

__all__ = ["BackboneConfig", "BackbonePredictor"]
