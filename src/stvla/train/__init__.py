"""Training (layer 6): `TrainingSamples` feeds recorded frames through a policy's input processor, and
`train` runs stage 1 (every weight) or stage 2 (LoRA from `--init`). It knows policies only through the
registry and the `Policy` interface."""

from stvla.train.trainer import LoraSettings, TrainConfig, train

__all__ = ["LoraSettings", "TrainConfig", "train"]
