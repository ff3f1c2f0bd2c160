"""The training loop (minibatches of spot chunks, schedules, early stopping, checkpoints)."""

from ._trainer import History, TrainConfig, train_module

__all__ = ["History", "TrainConfig", "train_module"]
