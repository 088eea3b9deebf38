"""Configuration of the PPER fine-tuning phase."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    """LoRA adapters (PEFT) on `target_modules` ("all-linear" or a list of module names)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"

    def peft_config(self) -> Any:
        """PEFT's `LoraConfig` for a causal language model with these settings."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")  # fmt: skip


class TrainingConfig(BaseModel):
    """Each round trains `steps` optimiser steps; each step replays `batch_size` programs (the paper's n)
    drawn by the replay section's priority, with the loss on the target tokens only: what the model writes after
    the prompt (the program, with a chat answer's fences, and the end of text, so that it learns to close its code
    and stop; P(t) counts the program's own tokens, `prompts.program_tokens`). Gradients accumulate
    over forward passes of `micro_batch_size` programs packed into one unpadded row, attention computed
    within each program (`pper.training.attention`), so that the matrix products are large; lower it only
    to bound memory. method: "lora" (PEFT adapters) or "full". precision: "auto" uses bfloat16 autocast
    where the device runs it natively (CUDA with bf16, or a CPU with AVX-512 BF16 or AMX), else float32;
    the weights stay float32. The optimiser is AdamW (torch's fused implementation where the device has one).
    schedule: a transformers scheduler name (restarted each round).
    checkpoint_every: steps between in-round checkpoints a killed run resumes from (0: round ends only).
    loss_mask: "program" (the loss on every program token) or "executed" (StepCoder's FGO: tokens of lines
    that no test ran get no loss; programs none of whose lines ran are skipped; the sandbox then collects
    line coverage; see `pper.training.examples`).
    distributed_timeout: seconds a data-parallel rank waits for rank 0 (`pper.training.distributed`): rank 0
    samples, tests and evaluates while the others wait, so it must outlast those phases.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = "lora"
    steps: int = Field(16, ge=0)
    batch_size: int = Field(8, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int = Field(1024, ge=8)
    checkpoint_every: int = Field(1, ge=0)
    loss_mask: Literal["program", "executed"] = "program"
    lora: LoraSettings = LoraSettings()
    distributed_timeout: float = Field(6 * 3600.0, gt=0)
