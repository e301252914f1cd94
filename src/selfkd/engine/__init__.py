from .trainer import Trainer, evaluate, train

__all__ = ["Trainer", "evaluate", "train"]
