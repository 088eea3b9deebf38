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
from ..source import source_lines
from ..tasks import Task

INFO_FILE = "prm.json"
HEAD_FILE = "head.safetensors"
BACKBONE_FILE = "backbone.safetensors"


@dataclass(frozen=True)
class LineInput:
    """A program as the PRM reads it: token ids; for each program line the position of its last token, or None
    where the line is not scored (a completion task's prompt line, given and so good by construction, or a line
    cut off by `max_length`); and `start`, the position of the first token the model wrote: the program's first,
    or the first after the given prompt lines of a completion task's program."""

    ids: tuple[int, ...]
    positions: tuple[int | None, ...]
    start: int

    @property
    def scored(self) -> list[int]:
        """The 0-based indices of the lines with a position."""
        return [i for i, p in enumerate(self.positions) if p is not None]


def line_input(task: Task, program: str, tokenizer: Any, max_length: int = 2048) -> LineInput:
    """The PRM's input for `program` (see the module's docstring). A line's last token is the last one that
    starts inside it (before its newline); a blank line's is the one holding its newline. Past `max_length`
    tokens the text is cut from its start (the prompt first)."""
    prompt_lines = 0
    if task.prompt_style == "completion" and program.startswith(task.prompt.rstrip()):
        head = ""
        prompt_lines = len(source_lines(task.prompt.rstrip()))
    elif task.prompt_style == "completion":  # not a continuation of the prompt: written after it, on a new line
        head = build_prompt(task, tokenizer).text + "\n"
    else:
        head = build_prompt(task, tokenizer).text + FENCE_OPEN
    encoded = tokenizer(head + program, return_offsets_mapping=True)
    cut = max(0, len(encoded.input_ids) - max_length)
    ids, offsets = list(encoded.input_ids)[cut:], list(encoded.offset_mapping)[cut:]
    tokens = [(begin, t) for t, (begin, finish) in enumerate(offsets) if finish > begin]  # no special tokens
    starts = [begin for begin, _ in tokens]
    positions: list[int | None] = []
    at = len(head)
    given = None  # the last token of the given prompt lines
    for i, line in enumerate(source_lines(program, keepends=True)):  # the lines `pper.prm.search` labels
        body = line.rstrip("\r\n")
        end = at + len(body)  # where its line break starts
        k = (bisect.bisect_left(starts, end) if body.strip() else bisect.bisect_right(starts, end)) - 1
        positions.append(None if i < prompt_lines or k < 0 else tokens[k][1])
        if i < prompt_lines and k >= 0:
            given = tokens[k][1]
        at += len(line)
    first = bisect.bisect_right(starts, len(head)) - 1
    start = given + 1 if given is not None else (tokens[max(first, 0)][1] if tokens else 0)
    return LineInput(tuple(ids), tuple(positions), start)


class PRM:
    """A causal LM's decoder with a linear head giving one logit per position (`scores` for a program's lines)."""

    def __init__(self, model: Any, tokenizer: Any, method: str = "lora", lora: Any = None, head: Any = None):
        import torch

        from ..training.config import LoraSettings

        self.tokenizer, self.method, self.lora = tokenizer, method, lora or LoraSettings()
        self.info: dict[str, Any] = {}
        if method == "lora":
            from peft import get_peft_model

            model = get_peft_model(model, self.lora.peft_config())
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
        """One logit per scored line of `item` (`LineInput.scored`, a 1-D tensor)."""
        import torch

        device = next(self.model.parameters()).device
        ids = torch.tensor([item.ids], device=device)
        out = self.model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][0, [item.positions[i] for i in item.scored]]
        return self.head(hidden.float()).squeeze(-1)

    def scores(self, item: LineInput) -> dict[int, float]:
        """1-based line -> the PRM's probability that it is good, for the scored lines."""
        import torch

        if not item.scored:
            return {}
        with torch.no_grad():
            values = torch.sigmoid(self.logits(item)).tolist()
        return {i + 1: v for i, v in zip(item.scored, values, strict=True)}

    def save(self, path: str | Path, info: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from ..files import write_atomic

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        save_file(trained, path / BACKBONE_FILE)
        save_file({n: p.detach().contiguous() for n, p in self.head.state_dict().items()}, path / HEAD_FILE)
        info = {"method": self.method, "lora": self.lora.model_dump(), **info}
        write_atomic(path / INFO_FILE, json.dumps(info, indent=2) + "\n")
        self.info = info

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
        from ..training.config import LoraSettings

        model, tokenizer, _ = load_model(info["base_model"], info.get("dtype", "float32"))
        prm = cls(model, tokenizer, info["method"], LoraSettings(**info.get("lora", {})))
        weights = load_file(path / BACKBONE_FILE)
        params = dict(prm.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        prm.head.load_state_dict(load_file(path / HEAD_FILE))
        prm.info = info
        return prm
