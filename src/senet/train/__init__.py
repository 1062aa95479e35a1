"""Training and evaluation: configs and presets, one training lifecycle (one process or torchrun DDP) that
classification and detection run as tasks, evaluation, plots."""

from senet.train.config import PRESETS, TrainConfig, resolve_config
from senet.train.control import TrainingInterrupted
from senet.train.engine import train
from senet.train.evaluation import evaluate
from senet.train.lifecycle import RunResult, TrainingDiverged

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
