"""Configuration of the sampling phase."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .models import DEFAULT_MODEL


class GenerationConfig(BaseModel):
    """model: an embedded model name, a model directory, a .gguf file or a hub id. mode: beam (the
    paper's top-k beams), sample (k samples at `temperature`, `top_p`) or greedy. batch_size: tasks per
    batch. max_new_tokens: a cap; generation stops at the end of each program before it."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    mode: Literal["beam", "sample", "greedy"] = "beam"
    k: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(300, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
