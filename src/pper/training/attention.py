"""Attention within each example of a packed row, for training forward passes over several examples at once.

A micro-batch of several examples is one unpadded row (`examples.pack`). transformers keeps such examples
apart with a block-diagonal mask built from the position ids, and SDPA then computes (and masks) the
attention of every position of the row with every other: quadratic in the row's length. Here the model's
attention runs instead once per example, causal, over that example's positions only (SDPA with
`is_causal`, as for a single example), while every other layer still runs over the whole row in one
batched pass. `SegmentAttention` switches a model to it for one forward pass (the model's configured
implementation is restored after), for models whose attention layers dispatch through transformers'
`AttentionInterface`; `SegmentAttention.works` checks that on the model itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

NAME = "pper_segments"


def segment_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    pper_segments: Sequence[tuple[int, int]] | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' SDPA attention run causally on each [start, end) of `pper_segments` (the examples of
    the row) and concatenated: (batch, row length, heads, head dim)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if pper_segments is None:
        raise RuntimeError(f"attention implementation {NAME!r} needs the pper_segments of the row")
    kwargs.pop("is_causal", None)
    outputs = [
        sdpa_attention_forward(
            module, query[..., s:e, :], key[..., s:e, :], value[..., s:e, :], None, is_causal=True, **kwargs
        )[0]
        for s, e in pper_segments
    ]
    return torch.cat(outputs, dim=1), None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segment_attention)


def segments(lengths: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The [start, end) of each example in a row of examples of these lengths, in order."""
    bounds, start = [], 0
    for n in lengths:
        bounds.append((start, start + n))
        start += n
    return tuple(bounds)


class SegmentAttention:
    """Switches `model`'s attention to `segment_attention` for the forward passes in `active()`."""

    def __init__(self, model: Any):
        register()
        self.configs = list({id(c): c for c in _configs(model)}.values())

    @contextmanager
    def active(self) -> Iterator[None]:
        previous = [c._attn_implementation for c in self.configs]
        for c in self.configs:
            c._attn_implementation = NAME
        try:
            yield
        finally:
            for c, name in zip(self.configs, previous, strict=True):
                c._attn_implementation = name

    def works(self, model: Any) -> bool:
        """Whether a packed forward pass with segment attention gives the logits of separate passes (two short
        examples; float32 tolerance), i.e. the model's attention layers honour it."""
        import torch

        if not self.configs:
            return False
        device = next(model.parameters()).device
        rows = [[11, 12, 13, 14, 15], [21, 22, 23]]
        ids = torch.tensor([rows[0] + rows[1]], device=device)
        positions = torch.tensor([list(range(5)) + list(range(3))], device=device)
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                separate = torch.cat([model(input_ids=torch.tensor([r], device=device)).logits[0] for r in rows])
                try:
                    with self.active():
                        packed = model(input_ids=ids, position_ids=positions, pper_segments=segments([5, 3])).logits[0]
                except (TypeError, RuntimeError, ValueError, KeyError):
                    return False
        finally:
            model.train(training)
        return bool(torch.allclose(packed.float(), separate.float(), rtol=1e-3, atol=1e-3))


def _configs(model: Any) -> list[Any]:
    """The configurations the model's modules read their attention implementation from."""
    return [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")]
