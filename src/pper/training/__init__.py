"""PPER fine-tuning phase (imports torch lazily: `from pper.training import TrainingConfig` stays light)."""

from .config import LoraSettings, TrainingConfig

__all__ = [
    "LoraSettings",
    "TrainingConfig",
    "PPERTrainer",
    "StepStats",
    "build_example",
    "Example",
    "program_logprobs",
    "rescore",
    "replay_for_round",
]


def __getattr__(name: str):
    if name in ("PPERTrainer", "StepStats"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("build_example", "Example"):
        from . import examples

        return getattr(examples, name)
    if name in ("program_logprobs", "rescore", "replay_for_round"):
        from . import scoring

        return getattr(scoring, name)
    raise AttributeError(name)
