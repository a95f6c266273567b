"""The feed-forward predictor (θ0 and Λ from context views) and its weights I/O."""

from diff3r_cli.model.predictor import Predictor, PredictorConfig, PredictorOutput, build_predictor

__all__ = ["Predictor", "PredictorConfig", "PredictorOutput", "build_predictor"]
