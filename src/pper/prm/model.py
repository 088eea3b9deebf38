"""The process reward model: a value head on the policy's architecture that scores each line of a program.

For a program of m lines written for a task, the PRM reads the text the policy read and wrote (the task's prompt
as `build_prompt` makes it, then the program: for a completion task the program itself, which begins with the
prompt; for an instruction task the chat prompt, the opening fence and the program) and scores line i from the
last hidden state h at its last token, the token that holds the line's final character or its newline:

    score_i = sigmoid(w . h_(t_i) + b),    loss = mean over labelled lines of BCE(score_i, label_i).

The backbone is the policy's decoder (from the default model, with LoRA adapters or fully trained); the head is a
linear layer. Saved as a directory (`save` / `load`): `prm.json` (base model, method, metrics), `head.safetensors`
and the trained backbone weights (`backbone.safetensors`: LoRA adapters or every weight).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..generation.prompts import FENCE_OPEN, build_prompt
from ..tasks import Task

INFO_FILE = "prm.json"
HEAD_FILE = "head.safetensors"
BACKBONE_FILE = "backbone.safetensors"


@dataclass(frozen=True)
class LineInput:
    """A program as the PRM reads it: token ids, and for each line the position of its last token."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]


def line_input(task: Task, program: str, tokenizer: Any, max_length: int = 2048) -> LineInput:
    """The PRM's input for `program` (see the module's docstring); lines past `max_length` tokens get the
    last position."""
    if task.prompt_style == "completion" and program.startswith(task.prompt.rstrip()):
        head, text = "", program
    else:
        head = build_prompt(task, tokenizer).text + ("" if task.prompt_style == "completion" else FENCE_OPEN)
        text = head + program
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(encoded.input_ids)[:max_length], list(encoded.offset_mapping)[:max_length]
    starts = [start if end > start else -1 for start, end in offsets]  # special tokens: never a line's last
    ends_of_lines = []
    position = len(head)
    for line in program.splitlines(keepends=True):  # the lines `pper.prm.search` labels
        ends_of_lines.append(position + len(line.rstrip("\r\n")))  # the line's newline, or the text's end
        position += len(line)
    positions = []
    ordered = sorted((s, t) for t, s in enumerate(starts) if s >= 0)
    keys = [s for s, _ in ordered]
    for end in ends_of_lines:
        k = bisect.bisect_right(keys, end) - 1  # the last token starting at or before the line's end
        positions.append(ordered[max(k, 0)][1] if ordered else 0)
    return LineInput(tuple(ids), tuple(positions))


class PRM:
    """A causal LM's decoder with a linear head giving one logit per position (`scores` for a program's lines)."""

    def __init__(self, model: Any, tokenizer: Any, method: str = "lora", lora: Any = None, head: Any = None):
        import torch

        self.tokenizer, self.method = tokenizer, method
        if method == "lora":
            from peft import get_peft_model

            from ..training.config import LoraSettings

            model = get_peft_model(model, (lora or LoraSettings()).peft_config())
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model
        hidden = model.config.hidden_size
        self.head = head if head is not None else torch.nn.Linear(hidden, 1)
        self.head.to(next(model.parameters()).device)

    def parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())

    def logits(self, item: LineInput) -> Any:
        """One logit per line of `item` (a 1-D tensor)."""
        import torch

        device = next(self.model.parameters()).device
        ids = torch.tensor([item.ids], device=device)
        out = self.model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][0, list(item.positions)]
        return self.head(hidden.float()).squeeze(-1)

    def scores(self, item: LineInput) -> list[float]:
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.logits(item)).tolist()

    def save(self, path: str | Path, info: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from ..files import write_atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        save_file(trained, path / BACKBONE_FILE)
        save_file({n: p.detach().contiguous() for n, p in self.head.state_dict().items()}, path / HEAD_FILE)
        write_atomic(path / INFO_FILE, json.dumps({"method": self.method, **info}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PRM:
        """A PRM saved by `save`, on the base model its `prm.json` names."""
        import torch
        from safetensors.torch import load_file

        from ..errors import PperError
        from ..generation import load_model

        path = Path(path)
        try:
            info = json.loads((path / INFO_FILE).read_text())
        except (OSError, ValueError) as e:
            raise PperError(f"{path} is not a PRM directory ({INFO_FILE}: {e})") from None
        model, tokenizer, _ = load_model(info["base_model"])
        prm = cls(model, tokenizer, info["method"])
        weights = load_file(path / BACKBONE_FILE)
        params = dict(prm.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        prm.head.load_state_dict(load_file(path / HEAD_FILE))
        prm.info = info
        return prm
