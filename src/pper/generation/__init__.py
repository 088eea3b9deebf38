"""Sampling phase: turn tasks into candidate programs with the log-probability the model gave them."""

from .models import DEFAULT_MODEL, load_model, resolve_model
from .prompts import Prompt, build_prompt, code_from_answer, extract_program
from .sampler import MODES, Candidate, Mode, Sampler

__all__ = [
    "DEFAULT_MODEL",
    "load_model",
    "resolve_model",
    "Prompt",
    "build_prompt",
    "code_from_answer",
    "extract_program",
    "MODES",
    "Candidate",
    "Mode",
    "Sampler",
]


def transformers_sampler(config, seed: int = 0):
    """A `TransformersSampler` for a `GenerationConfig` (loads the model)."""
    from .hf import TransformersSampler

    model, tokenizer, name = load_model(config.model, config.dtype)
    return TransformersSampler(
        model, tokenizer, name, config.batch_size, config.max_new_tokens, config.temperature, config.top_p, seed
    )
