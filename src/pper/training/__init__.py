"""PPER fine-tuning phase (imports torch lazily: `from pper.training import TrainingConfig` stays light)."""

from .config import LoraSettings, TrainingConfig

__all__ = ["LoraSettings", "TrainingConfig", "PPERTrainer", "StepStats", "build_example", "Example"]


def __getattr__(name: str):
    if name in ("PPERTrainer", "StepStats"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("build_example", "Example"):
        from . import examples

        return getattr(examples, name)
    raise AttributeError(name)
