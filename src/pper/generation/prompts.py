"""Prompts per task style, where generation stops, and turning a completion into a runnable program.

* completion (HumanEval): the model continues the code prompt. The prompt is given without its trailing
  whitespace: HumanEval prompts end in a newline, and a model asked to continue after it must start with
  an indentation token it rarely chose there in training; ending at `\"\"\"` lets it write "\\n    ..."
  itself (greedy SmolLM2-135M: 0 of the first 40 tasks pass with the newline, 5 without). Generation
  stops where a new top-level statement begins (Codex's stop sequences) or at the end of text; the
  program is the prompt plus the completion.
* instruction (MBPP, APPS, CodeContests, JSONL tasks): the problem statement, with up to three of its
  asserts shown as in the MBPP paper, in the model's chat template where it has one. The program is the
  first fenced code block of the answer, or the answer with the prose around the code dropped.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from ..tasks import AssertTests, CallTests, StdioTests, Task

COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert ")
SHOWN_TESTS = 3
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python|python3)?[ \t]*\n(.*?)(?:\n```|\Z)", re.S)


@dataclass(frozen=True)
class Prompt:
    """The text given to the model for one task, and the strings that end a completion."""

    task: Task
    text: str
    stops: tuple[str, ...]


def build_prompt(task: Task, tokenizer: Any = None) -> Prompt:
    """The prompt for `task`; the tokenizer's chat template wraps instruction prompts when it has one."""
    if task.prompt_style == "completion":
        return Prompt(task, task.prompt.rstrip(), COMPLETION_STOPS)
    message = instruction(task)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = message + "\n"
    return Prompt(task, text, ())


def instruction(task: Task) -> str:
    """The user message for an instruction task (MBPP paper style for assert tests)."""
    tests = task.tests
    parts = [f"You are an expert Python programmer, and here is your task: {task.prompt.strip()}"]
    if isinstance(tests, AssertTests) and tests.asserts:
        shown = "\n".join(tests.asserts[:SHOWN_TESTS])
        parts.append(f"Your code should pass these tests:\n\n{shown}")
    elif isinstance(tests, CallTests):
        starter = task.metadata.get("starter_code") or ""
        parts.append(
            f"Write a Python function named `{tests.fn_name}`." + (f"\n\n{starter.strip()}" if starter else "")
        )
    elif isinstance(tests, StdioTests):
        parts.append("Write a complete Python program that reads from standard input and writes to standard output.")
    parts.append("Answer with the code in a ```python block.")
    return "\n\n".join(parts)


def stop_index(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop sequence begins in `text`, if any."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def extract_program(prompt: Prompt, completion: str) -> str:
    """The runnable program for a completion (already cut at its stop sequence)."""
    if prompt.task.prompt_style == "completion":
        return prompt.text + completion.rstrip() + "\n"
    return code_from_answer(completion)


def training_target(prompt: Prompt, program: str) -> str:
    """What the model should write after `prompt` to produce `program` (the inverse of `extract_program`):
    the program past the prompt for completion tasks, the program in a ```python block for instruction
    tasks. The caller appends the end-of-text token."""
    if prompt.task.prompt_style == "completion":
        if program.startswith(prompt.text):
            return program[len(prompt.text) :]
        return "\n" + program  # not a continuation of this prompt: the whole program, after the docstring
    return "```python\n" + program.strip("\n") + "\n```"


def code_from_answer(answer: str) -> str:
    """The code in a chat answer: its first fenced block, else the longest stretch of lines that parses,
    with prose before and after dropped."""
    match = _FENCE.search(answer)
    if match:
        return match.group(1).strip("\n") + "\n"
    lines = answer.strip("\n").splitlines()
    for start in range(len(lines)):
        for end in range(len(lines), start, -1):
            chunk = "\n".join(lines[start:end])
            if chunk.strip() and _parses(chunk) and any(c in chunk for c in "=():"):
                return chunk.strip("\n").rstrip() + "\n"
    return answer.strip() + "\n"


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True
