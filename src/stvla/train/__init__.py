"""Training loops: they know policies only through the registry interface."""

from stvla.train.trainer import LoraSettings, TrainConfig, train

__all__ = ["LoraSettings", "TrainConfig", "train"]
