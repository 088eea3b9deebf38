"""Configuration of the sampling phase."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .models import DEFAULT_MODEL


class TeacherConfig(BaseModel):
    """A teacher model behind an OpenAI-compatible API (the key is read from the `api_key_env` variable)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(4, ge=1)
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)


class GenerationConfig(BaseModel):
    """model: an embedded model name, a model directory, a .gguf file or a hub id. mode: beam (the
    paper's top-k beams), sample (k samples at `temperature`, `top_p`) or greedy. batch_size: tasks per
    batch. max_new_tokens: a cap; generation stops at the end of each program before it. teacher: fill
    the buffer from a teacher model over an API instead (mode sample or greedy); `model` is still the
    model trained and evaluated. backend: "local" (this process) or "ray": `replicas` copies of the model in
    Ray actors share each round's tasks (`pper.generation.ray_sampler`; each asks Ray for `replica_cpus`
    CPUs and `replica_gpus` GPUs), on the cluster `execution.ray.address` names. rerank: "prm" samples
    `candidates` programs per task (more than `k`; beam width `candidates` in beam mode) and keeps the k the
    run's process reward model ranks best (`pper.prm.rerank`); "none" keeps what is sampled."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    mode: Literal["beam", "sample", "greedy"] = "beam"
    k: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    max_new_tokens: int = Field(300, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    teacher: TeacherConfig | None = None
    backend: Literal["local", "ray"] = "local"
    replicas: int = Field(2, ge=1)
    replica_cpus: float = Field(1.0, ge=0)
    replica_gpus: float = Field(0.0, ge=0)
    rerank: Literal["none", "prm"] = "none"
    candidates: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _teacher_mode(self) -> GenerationConfig:
        if self.teacher is not None and self.mode == "beam":
            raise ValueError("an OpenAI-compatible API has no beam search: use mode sample or greedy with a teacher")
        if self.teacher is not None and self.backend == "ray":
            raise ValueError("backend 'ray' fans out a local model: a teacher's API has its own `concurrency`")
        if self.rerank == "prm":
            if self.mode == "greedy":
                raise ValueError("rerank 'prm' chooses among several candidates: use mode beam or sample, not greedy")
            if self.candidates is None or self.candidates <= self.k:
                raise ValueError(
                    f"rerank 'prm' keeps the k = {self.k} best of `candidates` programs per task: set "
                    f"generation.candidates above k (got {self.candidates})"
                )
        elif self.candidates is not None:
            raise ValueError("generation.candidates is the number sampled before reranking: set rerank to 'prm'")
        return self
