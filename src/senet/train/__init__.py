"""Training and evaluation: configs and presets, the engine (one process or torchrun DDP), checkpoints."""

from senet.train.config import PRESETS, TrainConfig, resolve_config
from senet.train.control import TrainingInterrupted
from senet.train.engine import RunResult, TrainingDiverged, evaluate, train

__all__ = [
    "PRESETS",
    "RunResult",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "evaluate",
    "resolve_config",
    "train",
]
