"""Sampling phase: turn tasks into candidate programs with the log-probability the model gave them."""

from .models import DEFAULT_MODEL, load_model, resolve_model
from .prompts import (
    Prompt,
    build_prompt,
    code_from_answer,
    extract_program,
    program_span,
    program_token_range,
    program_tokens,
    training_target,
)
from .sampler import MODES, Candidate, Mode, Sampler

__all__ = [
    "DEFAULT_MODEL",
    "load_model",
    "resolve_model",
    "Prompt",
    "build_prompt",
    "code_from_answer",
    "extract_program",
    "program_span",
    "program_token_range",
    "program_tokens",
    "training_target",
    "MODES",
    "Candidate",
    "Mode",
    "Sampler",
]


def transformers_sampler(config, seed: int = 0, loaded=None):
    """A `TransformersSampler` for a `GenerationConfig`: on `loaded` (model, tokenizer, name) if given,
    else on the config's model, loaded here."""
    from .hf import TransformersSampler

    model, tokenizer, name = loaded or load_model(config.model, config.dtype)
    return TransformersSampler(
        model, tokenizer, name, config.batch_size, config.max_new_tokens, config.temperature, config.top_p, seed
    )


def teacher_sampler(config, seed: int = 0):
    """An `OpenAISampler` for a `GenerationConfig` with a teacher."""
    import os

    from .openai_api import OpenAISampler

    t = config.teacher
    return OpenAISampler(
        t.base_url,
        t.model,
        api_key=os.environ.get(t.api_key_env),
        concurrency=t.concurrency,
        timeout=t.timeout,
        max_retries=t.max_retries,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=seed,
    )
