"""PPER fine-tuning: minibatches replayed from the buffer by priority, the loss on program tokens only.

Built on transformers (the model, its schedulers) and PEFT (LoRA); the loop itself is short and plain:
draw n programs -> pack them into unpadded rows -> cross-entropy over the program positions only (the
logits of prompt positions are never computed) -> AdamW step. Checkpoints hold the trainable weights,
the optimiser and scheduler state, the replay sampler's generator and torch's, so a resumed round
continues exactly where the saved one stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..buffer import ReplayBuffer
from ..buffer.replay import Replay
from ..errors import PperError
from ..files import replace_dir, restore_dir
from .attention import SegmentAttention, segments
from .config import TrainingConfig
from .examples import Example, build_example, pack

WEIGHTS_FILE = "weights.safetensors"
MAX_REDRAWS = 1000  # minibatches drawn in a row before FGO gives up on finding a program that ran
STATE_FILE = "trainer.pt"
INFO_FILE = "checkpoint.json"


@dataclass(frozen=True)
class StepStats:
    round: int
    step: int
    loss: float
    tokens: int
    target_tokens: int
    learning_rate: float
    grad_norm: float
    seconds: float
    skipped: int = 0  # drawn programs left out of the step (FGO: no line of theirs ran)
    repaired: int = 0  # programs of the step written in a repair turn (RLEF: turn >= 2)


def autocast_dtype(precision: str, device_type: str) -> Any:
    """The autocast dtype for a `TrainingConfig.precision` on a device, or None for float32."""
    import torch

    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float16":
        return torch.float16
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device_type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX). Without it oneDNN emulates
    bfloat16, and a matmul ran 3.3x slower than float32 on the 2-core AVX-512 machine pper is developed on."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class PPERTrainer:
    """Fine-tunes `model` (full, or LoRA adapters added here) on programs replayed from a buffer.

    With `group` (`pper.training.distributed`), data-parallel: rank 0 draws each minibatch and shares it, every
    rank trains on its share under DDP; the other ranks pass no buffer to `run_round`."""

    def __init__(self, model: Any, tokenizer: Any, config: TrainingConfig, seed: int = 0, group: Any = None):
        import torch

        self.config, self.tokenizer, self.seed, self.group = config, tokenizer, seed, group
        self._ddp: Any = None  # the DDP-wrapped model, made at the first step (all ranks at once)
        torch.manual_seed(seed)
        if config.method == "lora":
            from peft import PeftModel, get_peft_model

            if not isinstance(model, PeftModel):
                model = get_peft_model(model, config.lora.peft_config())
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model
        self.device = next(model.parameters()).device
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.segments = SegmentAttention(model) if config.micro_batch_size > 1 else None
        if self.segments is not None and not self.segments.works(model):
            self.segments = None  # the model's attention ignores it: packed rows keep transformers' block mask
        self.dtype = autocast_dtype(config.precision, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        self.round, self.step = 0, 0
        self.scheduler: Any = None
        self.replay: Replay | None = None
        self._examples: dict[int, Example | None] = {}
        self._repairs: set[int] = set()  # programs of repair turns among those whose example was built
        self.skipped = self.repaired = 0

    # -- one round ---------------------------------------------------------------------------------

    def begin_round(self, round: int, replay: Replay | None, steps: int) -> None:
        """Start round `round`: `steps` optimiser steps over `replay` (None: a rank other than 0, which
        receives its minibatches), the learning rate schedule restarted."""
        from transformers import get_scheduler

        self.round, self.step, self.replay, self.steps = round, 0, replay, steps
        self.scheduler = get_scheduler(
            self.config.schedule,
            self.optimizer,
            num_warmup_steps=round_half_up(self.config.warmup_ratio * steps),
            num_training_steps=max(steps, 1),
        )

    def run_round(
        self, buffer: ReplayBuffer | None, checkpoint: Callable[[], None] | None = None
    ) -> Iterator[StepStats]:
        """Train the rest of the round's steps, yielding each step's figures; `checkpoint` is called every
        `checkpoint_every` steps (after the step has been yielded). In a data-parallel group, rank 0 passes the
        buffer and the others None: rank 0 draws each minibatch and shares it."""
        every = self.config.checkpoint_every
        leader = self.group is None or self.group.main
        if leader and self.config.loss_mask == "executed" and self.step < self.steps:
            assert self.replay is not None and buffer is not None, "begin_round first"
            if not buffer.executed_program_ids().intersection(self.replay.table.program_id.tolist()):
                raise PperError(
                    "training.loss_mask is 'executed' but no program in the replay has a line that ran in its tests "
                    "(no coverage was collected, or every program failed to load): nothing to train on"
                )
        while self.step < self.steps:
            drawn = self.draw_weighted(buffer) if leader else None
            if self.group is not None:
                drawn = self.group.share(drawn)
            yield self.train_step(*drawn)
            if checkpoint and every and self.step % every == 0 and self.step < self.steps:
                checkpoint()

    def draw_examples(self, buffer: ReplayBuffer) -> list[Example]:
        """The next minibatch of `batch_size` examples drawn from the round's replay."""
        return self.draw_weighted(buffer)[0]

    def draw_weighted(self, buffer: ReplayBuffer) -> tuple[list[Example], list[float]]:
        """The next minibatch and each draw's importance-sampling weight (`Draw.weight`, 1.0 when
        `replay.importance_beta` is 0)."""
        assert self.replay is not None, "begin_round first"
        examples, weights = [], []
        self.skipped = self.repaired = 0
        for _ in range(MAX_REDRAWS):  # with FGO, a minibatch of programs none of which ran is drawn again
            if examples:
                break
            for draw in self.replay.sample(self.config.batch_size):
                ex = self._example(buffer, draw.program_id)
                if ex is None:
                    self.skipped += 1
                    continue
                examples.append(ex)
                weights.append(draw.weight)
                self.repaired += draw.program_id in self._repairs
        if not examples:
            raise PperError(f"training.loss_mask 'executed': {MAX_REDRAWS} minibatches drawn, no program in them ran")
        return examples, weights

    def _example(self, buffer: ReplayBuffer, program_id: int) -> Example | None:
        """The training example of a stored program; None where FGO leaves it out (no line of it ran). A program
        whose coverage was cut short (`coverage_complete` False: lines that ran may be missing) is not masked."""
        if program_id in self._examples:
            return self._examples[program_id]
        program = buffer.program(program_id)
        executed = None
        if self.config.loss_mask == "executed":
            executed = program.result.executed_lines if program.result else None
            if not executed:
                self._examples[program_id] = None
                return None
            if not program.result.coverage_complete:
                executed = None
        task = buffer.task(program.task_id)
        if program.turn > 1:
            self._repairs.add(program_id)
        ex = build_example(
            task, program.text, self.tokenizer, self.config.max_length, executed, program.prefix, program.messages
        )
        self._examples[program_id] = ex
        return ex

    def train_step(self, examples: list[Example], weights: list[float] | None = None) -> StepStats:
        """One optimiser step on `examples`: loss = sum_i w_i * L_i / T, with L_i the summed cross-entropy of
        example i's target tokens (each scaled by its FGO weight, `Example.weights`), T their summed FGO weight
        (the target tokens of all examples, without FGO) and w_i the example's importance-sampling weight
        (`weights`, default 1 each): with every weight 1, the mean cross-entropy over all target tokens.

        In a data-parallel group of N ranks, every rank gets the whole minibatch and computes the terms of
        examples rank, rank + N, ... over the same T, times N (DDP averages the ranks' gradients): the summed
        gradient, the clipped norm and the step are one process's on the whole minibatch."""
        import torch

        start = time.perf_counter()
        self.model.train()
        if weights is not None and len(weights) != len(examples):
            raise ValueError(f"{len(weights)} weights for {len(examples)} examples")
        if weights is not None and all(w == 1.0 for w in weights):
            weights = None  # the unweighted loss, bit for bit
        target_tokens = sum(ex.target_tokens for ex in examples)
        trained = sum(ex.trained_tokens for ex in examples) if any(ex.weights for ex in examples) else target_tokens
        mine, my_weights, scale = examples, weights, 1.0
        if self.group is not None:
            g = self.group
            mine, my_weights, scale = examples[g.rank :: g.size], weights and weights[g.rank :: g.size], g.size
            if not mine:  # fewer examples than ranks: a zero-weighted pass keeps DDP's gradient sync in step
                mine, my_weights, scale = examples[:1], [0.0], 0.0
        size = self.config.micro_batch_size
        chunks = range(0, len(mine), size)
        total = 0.0
        for i in chunks:
            chunk_weights = my_weights[i : i + size] if my_weights is not None else None
            last = i == chunks[-1]
            with self._sync(last):
                loss = self.loss_sum(mine[i : i + size], chunk_weights) / max(trained, 1.0)
                (self.scaler.scale(loss * scale) if self.scaler else loss * scale).backward()
            total += loss.item()
        if self.group is not None:
            total = self.group.sum(total)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = list(self.params.values())
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepStats(
            self.round,
            self.step,
            total,
            sum(len(ex.ids) for ex in examples),
            target_tokens,
            lr,
            float(norm),
            time.perf_counter() - start,
            self.skipped,
            self.repaired,
        )

    def _sync(self, last: bool) -> Any:
        """In a data-parallel group: DDP's gradient sync on the step's last backward pass only."""
        if self.group is None:
            return contextlib.nullcontext()
        if self._ddp is None:
            self._ddp = self.group.accelerator.prepare_model(self.model)
        return contextlib.nullcontext() if last else self._ddp.no_sync()

    @property
    def forward_model(self) -> Any:
        """The model forward passes go through: DDP's wrapper in a data-parallel group."""
        return self._ddp if self._ddp is not None else self.model

    def loss_sum(self, examples: list[Example], weights: list[float] | None = None) -> Any:
        """Summed cross-entropy of the target tokens of `examples`, packed in one unpadded row, each token's
        scaled by its FGO weight (`Example.weights`); with `weights`, each example's sum scaled by its weight
        (sum_i w_i * L_i)."""
        import torch
        import torch.nn.functional as F

        ids, positions, predict = pack(examples)
        input_ids = torch.tensor([ids], device=self.device)
        keep = torch.tensor(predict, device=self.device)
        extra: dict[str, Any] = {}
        attention = contextlib.nullcontext()
        if self.segments is not None and len(examples) > 1:
            extra["pper_segments"] = segments([len(ex.ids) for ex in examples])
            attention = self.segments.active()
        with (
            attention,
            torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None),
        ):
            out = self.forward_model(
                input_ids=input_ids,
                position_ids=torch.tensor([positions], device=self.device),
                logits_to_keep=keep,
                use_cache=False,
                **extra,
            )
        masked = any(ex.weights is not None for ex in examples)
        if weights is None and not masked:
            return F.cross_entropy(out.logits[0].float(), input_ids[0, keep + 1], reduction="sum")
        per_token = F.cross_entropy(out.logits[0].float(), input_ids[0, keep + 1], reduction="none")
        weights = weights if weights is not None else [1.0] * len(examples)
        scale = [w * t for ex, w in zip(examples, weights, strict=True) for t in ex.token_weights()]
        return (per_token * torch.tensor(scale, device=self.device, dtype=per_token.dtype)).sum()

    # -- models for inference and users ------------------------------------------------------------

    def inference_model(self) -> Any:
        """The current model for sampling and evaluation, in eval mode: LoRA adapters merged into a copy
        (the training copy is left untouched), or the fully fine-tuned model itself."""
        if self.config.method == "lora":
            return copy.deepcopy(self.model).merge_and_unload().eval()
        return self.model.eval()

    def save_model(self, path: str | Path, model: Any = None) -> None:
        """A plain transformers model directory (merged weights and tokenizer) that any tool loads."""
        model = model if model is not None else self.inference_model()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # -- checkpoints -------------------------------------------------------------------------------

    def save(self, path: str | Path, info: dict[str, Any] | None = None, model: Any = None) -> None:
        """Write a checkpoint to `path` atomically (a directory written aside, then renamed in place);
        with `model` (from `inference_model`), also a plain model directory `path/model` for users."""
        import torch
        from safetensors.torch import save_file

        path = Path(path)
        staging = path.with_name(path.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file({n: p.detach().contiguous() for n, p in self.params.items()}, staging / WEIGHTS_FILE)
        torch.save(
            {
                "round": self.round,
                "step": self.step,
                "steps": self.steps,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "replay_rng": self.replay.sampler.state() if self.replay else None,
                "torch_rng": torch.get_rng_state(),
            },
            staging / STATE_FILE,
        )
        if model is not None:
            self.save_model(staging / "model", model)
        (staging / INFO_FILE).write_text(
            json.dumps({"round": self.round, "step": self.step, "method": self.config.method, **(info or {})})
        )
        replace_dir(staging, path)

    def load(self, path: str | Path, replay: Replay | None = None, resume: bool | None = None) -> None:
        """Restore a checkpoint written by `save`. `resume` (default: whether `replay` is given): the round
        continues, over `replay` (None: a data-parallel rank other than 0, which has no replay)."""
        import torch
        from safetensors.torch import load_file

        path = Path(path)
        try:
            weights = load_file(path / WEIGHTS_FILE, device=str(self.device))
            state = torch.load(path / STATE_FILE, weights_only=False)
        except (OSError, RuntimeError) as e:
            raise PperError(f"cannot read checkpoint {path}: {e}") from None
        missing = set(self.params) - set(weights)
        if missing:
            raise PperError(
                f"checkpoint {path} does not match this model ({len(missing)} trainable tensors missing, e.g. "
                f"{sorted(missing)[0]}); was it written with another training.method?"
            )
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(weights[name])
        if resume is None:
            resume = replay is not None
        if resume:  # a new scheduler sets the learning rate: the optimizer state then restores it
            self.begin_round(state["round"], replay, state["steps"])
            if state["scheduler"]:
                self.scheduler.load_state_dict(state["scheduler"])
            if state["replay_rng"] and replay is not None:
                replay.sampler.set_state(state["replay_rng"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.round, self.step, self.steps = state["round"], state["step"], state["steps"]
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])


def round_half_up(x: float) -> int:
    return int(x + 0.5)


def read_info(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's info (round, step, ...) if `path` holds a complete checkpoint (one left aside by a
    `replace_dir` killed between its two renames is put back first)."""
    path = Path(path)
    restore_dir(path)
    try:
        return json.loads((Path(path) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
