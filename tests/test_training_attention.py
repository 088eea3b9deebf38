"""Attention per example in a packed row: the same loss and gradients as transformers' block-diagonal mask (and
as separate passes), and the model's own attention implementation untouched outside pper's passes."""

from __future__ import annotations

import pytest
import torch

from pper.generation import load_model
from pper.tasks import load_tasks
from pper.training import TrainingConfig
from pper.training.examples import build_example
from pper.training.trainer import PPERTrainer


def _loss_and_grads(trainer, examples):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.loss_sum(examples)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.params.items()}


def test_a_packed_row_attends_within_each_example_like_the_block_mask():
    model, tokenizer, _ = load_model("default")
    trainer = PPERTrainer(model, tokenizer, TrainingConfig(method="lora", precision="float32", micro_batch_size=3))
    assert trainer.segments is not None  # the default model's attention honours it
    examples = [build_example(t, t.solutions[0], tokenizer, 96) for t in load_tasks("humaneval", limit=3)]
    segments = trainer.segments
    loss, grads = _loss_and_grads(trainer, examples)
    assert model.config._attn_implementation == "sdpa"  # restored after the pass
    trainer.segments = None  # transformers' block-diagonal mask from the position ids
    masked, masked_grads = _loss_and_grads(trainer, examples)
    with torch.no_grad():
        separate = sum(trainer.loss_sum([e]).item() for e in examples)
    trainer.segments = segments
    assert loss == pytest.approx(masked, rel=1e-5) and loss == pytest.approx(separate, rel=1e-5)
    for name, grad in grads.items():
        # float32 sums in another order: one element of 3072 once differed by 2.3e-6 (relative 2.4e-3)
        torch.testing.assert_close(grad, masked_grads[name], rtol=1e-3, atol=1e-5)
