from .evaluation import evaluate
from .trainer import Trainer, train

__all__ = ["Trainer", "evaluate", "train"]
