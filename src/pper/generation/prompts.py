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

A program's P(t) and token count are taken over its own tokens (`program_tokens`): the whole completion for
completion tasks, the code without the prose and fences around it for instruction tasks; sampling and
training use that one definition.

A prompt may give the model the start of its program (`prefix`, a curriculum stage: `pper.curriculum`): a
completion task's prompt is then its code prompt followed by the prefix, to continue; an instruction task's
chat prompt ends with the assistant's turn already begun, prefilled with the opening ```python fence and the
prefix (`Prompt.given`). The program is still the whole program (prompt or fence, prefix, completion), and P(t)
and the training loss cover only what the model wrote after the prefix. A prefilled answer is a continuation of
code too, so it gets stop strings (`stops_for_prefix`; `curriculum.prefill_stops: false` turns them off): the
closing fence, a top-level `print(`, `assert ` or `if __name__` (not for a standard-input task: a script's own
top-level code), and a top-level redefinition of a function the prefix defines. Without them SmolLM2-135M, given
half a reference, finished the function and wrote it again until the token limit in 37% of 103 completions (the
repeats pass their tests, so they were replayed; docs/results.md, StepCoder).

A repair turn (RLEF, `feedback.turns`) is a chat for every task style (`build_repair_prompt`), in the model's chat
template:

    user:      the task: `instruction(task)` for an instruction task; for a completion task, `COMPLETE_TASK`
               with its code prompt
    assistant: the previous program, in a ```python block
    user:      `REPAIR_REQUEST` with the feedback (`feedback_text`) on the public tests
    ... (one assistant and one user message more per earlier repair turn) ...
    assistant: the corrected program, extracted from the reply as for an instruction task

Completion stop strings do not apply there; P(t) and the loss cover the code of the reply (`program_tokens`), and
the conversation up to the reply is the prompt (`Prompt.messages`).

A chat model that cannot be prefilled (a teacher behind a chat API) continues a program's first lines when asked
to (`continuation_prompt`, used by the PRM's teacher completer): one user message, `task_message(task)` then
`CONTINUE_REQUEST` with the lines in a ```python block; the program is the code of the reply, which counts as a
continuation only where it keeps those lines (`pper.prm.label`).
"""

from __future__ import annotations

import ast
import bisect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..source import source_lines
from ..tasks import AssertTests, CallTests, StdioTests, Task, TestSuite

COMPLETE_TASK = (
    "Complete this Python function. Answer with the whole function in a ```python block.\n\n```python\n{prompt}\n```"
)
REPAIR_REQUEST = "{feedback}\n\nFix the program. Answer with the whole corrected program in a ```python block."
CONTINUE_REQUEST = (
    "The program starts with the lines below. Answer with the whole program in a ```python block: these lines "
    "unchanged, then the rest.\n\n```python\n{prefix}\n```"
)
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert ")
PREFILL_STOPS = ("\n```", "\nif __name__", "\nprint(", "\nassert ")
_TOP_LEVEL_DEF = re.compile(r"^(?:async\s+)?def\s+(\w+)\s*\(", re.M)
SHOWN_TESTS = 3
FENCE_OPEN = "```python\n"
# pper.execution.harness's error texts: "... (at line N of the program)", and "SyntaxError: ... (line N)"
_RAISED_AT = re.compile(r"\((?:at )?line (\d+)(?: of the program)?\)$")
# a fenced block's body ends at a closing fence on its own line (indented too, as in a markdown list item), or at
# one that closes the body's last line (`return x```), or at the end of the answer
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python|python3)?[ \t]*\n(.*?)(?:\n[ \t]*```|```[ \t]*(?=\n|\Z)|\Z)", re.S)


@dataclass(frozen=True)
class Prompt:
    """The text given to the model for one task, and the strings that end a completion. `prefix`: the start
    of the program the model was given; `given`: the text of the model's own answer that `text` ends with
    (the prefix, after ```python for an instruction task; empty without a prefix)."""

    task: Task
    text: str
    stops: tuple[str, ...]
    prefix: str = ""
    given: str = ""
    messages: tuple[dict[str, str], ...] = ()

    @property
    def continues(self) -> bool:
        """Whether the model continues the task's code (a completion task's own prompt), rather than answering
        in a chat (an instruction task, or any repair turn), where the program is extracted from the answer."""
        return self.task.prompt_style == "completion" and not self.messages


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The token ids of `prompt.text`, the same for sampling and training. A chat-templated text already holds the
    special tokens its template starts with (Llama 3's and Mistral's begin-of-text), so it is tokenized without
    the tokenizer adding them again; a plain text (a completion task's code, or an instruction without a chat
    template) gets them as the tokenizer adds them."""
    templated = not prompt.continues and bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(prompt.text, add_special_tokens=not templated).input_ids)


def build_prompt(task: Task, tokenizer: Any = None, prefix: str = "", prefill_stops: bool = True) -> Prompt:
    """The prompt for `task`; the tokenizer's chat template wraps instruction prompts when it has one. With a
    `prefix`, the model is given the start of its program (see the module docstring), and a prefilled answer
    stops at `stops_for_prefix(prefix, task)` unless `prefill_stops` is False (`curriculum.prefill_stops`)."""
    if task.prompt_style == "completion":
        return Prompt(task, task.prompt.rstrip() + prefix, COMPLETION_STOPS, prefix, prefix)
    message = instruction(task)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = message + "\n"
    given = FENCE_OPEN + prefix if prefix else ""
    stops = stops_for_prefix(prefix, task) if prefix and prefill_stops else ()
    return Prompt(task, text + given, stops, prefix, given)


def stops_for_prefix(prefix: str, task: Task | None = None) -> tuple[str, ...]:
    """Where a prefilled answer's completion ends (besides end of text): `PREFILL_STOPS` (only the closing fence
    for a standard-input `task`, a script whose top-level prints and `if __name__` are its own code), and a new
    top-level definition of each function the prefix defines at top level (`\ndef name(`), which can only
    redefine it. Helpers under other names are kept."""
    names = dict.fromkeys(_TOP_LEVEL_DEF.findall(prefix))
    base = PREFILL_STOPS[:1] if task is not None and isinstance(task.tests, StdioTests) else PREFILL_STOPS
    return base + tuple(f"\ndef {name}(" for name in names)


def instruction(task: Task) -> str:
    """The user message for an instruction task (MBPP paper style for assert tests): up to `SHOWN_TESTS` asserts of
    its public tests (of its tests where it has no public ones; none where its public tests are not asserts), never
    a private test beyond them."""
    tests = task.tests
    parts = [f"You are an expert Python programmer, and here is your task: {task.prompt.strip()}"]
    shown_tests = task.public_tests if task.public_tests is not None else tests
    if isinstance(tests, AssertTests) and isinstance(shown_tests, AssertTests) and shown_tests.asserts:
        shown = "\n".join(shown_tests.asserts[:SHOWN_TESTS])
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


def task_message(task: Task) -> str:
    """The first user message of a repair conversation: the task, as a chat asks for it."""
    if task.prompt_style == "completion":
        return COMPLETE_TASK.format(prompt=task.prompt.rstrip())
    return instruction(task)


def continuation_prompt(task: Task, prefix: str, tokenizer: Any = None) -> Prompt:
    """The chat prompt that asks for the whole program starting with `prefix` (see the module docstring)."""
    request = CONTINUE_REQUEST.format(prefix=prefix.strip("\n"))
    return chat_prompt(task, ({"role": "user", "content": task_message(task) + "\n\n" + request},), tokenizer)


def repair_messages(task: Task, turns: Sequence[tuple[str, str]]) -> tuple[dict[str, str], ...]:
    """The conversation of a repair turn, up to the model's reply: the task, then for each earlier turn
    (program, feedback) the program as the assistant's answer and the feedback as the user's request."""
    messages = [{"role": "user", "content": task_message(task)}]
    for program, feedback in turns:
        messages.append({"role": "assistant", "content": FENCE_OPEN + program.strip("\n") + "\n```"})
        messages.append({"role": "user", "content": REPAIR_REQUEST.format(feedback=feedback)})
    return tuple(messages)


def build_repair_prompt(task: Task, turns: Sequence[tuple[str, str]], tokenizer: Any = None) -> Prompt:
    """The prompt of a repair turn after `turns` (program, feedback) (see the module docstring); no stop
    strings."""
    return chat_prompt(task, repair_messages(task, turns), tokenizer)


def chat_prompt(task: Task, messages: Sequence[dict[str, str]], tokenizer: Any = None) -> Prompt:
    """The prompt that asks the model to answer the chat `messages` (a repair turn's), in the tokenizer's chat
    template where it has one."""
    messages = tuple(messages)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant: "
    return Prompt(task, text, (), messages=messages)


def prompt_for(task: Task, tokenizer: Any = None, prefix: str = "", messages: Sequence[dict[str, str]] = ()) -> Prompt:
    """The prompt a stored program was written after: its repair turn's chat where it has `messages`, else the
    task's own prompt with the `prefix` it was given."""
    return chat_prompt(task, messages, tokenizer) if messages else build_prompt(task, tokenizer, prefix)


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 3 characters and "..." when it is longer than `limit`."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def describe_test(tests: TestSuite, i: int, max_chars: int | None = None) -> str:
    """Test `i` of a suite as the model is shown it in feedback, in at most `max_chars` characters: a stdio case's
    input and expected output are clipped apart, so that both show."""
    limit = max_chars if max_chars is not None else 1 << 62
    if isinstance(tests, AssertTests):
        return clip(tests.asserts[i], limit)
    if isinstance(tests, CallTests):
        case = tests.cases[i]
        args = ", ".join(repr(a) for a in case.args)
        return clip(f"{tests.fn_name}({args}) should return {case.expected!r}", limit)
    case = tests.cases[i]
    given, expected = case.input.rstrip(), case.output.rstrip()
    room = max(limit - len("input:\n\nexpected output:\n"), 0)
    expected = clip(expected, max(room // 2, room - len(given)))  # at least half of the room, if it needs it
    return clip(f"input:\n{clip(given, room - len(expected))}\nexpected output:\n{expected}", limit)


def feedback_text(
    task: Task, verdicts: Sequence[str], errors: Sequence[str | None], program: str = "", max_chars: int = 1000
) -> str | None:
    """The feedback of a repair turn on a `program`'s results on the task's **public** tests (`verdicts`, `errors`
    per public test): the first failing test, as the model is shown it, and what went wrong: the value the
    program returned, or the exception and the line of the program that raised it. At most `max_chars`
    characters: what went wrong keeps at least half of them, the test the rest (a long input is clipped, its
    expected output still shown). None when every public test passed, or the task has none. Nothing of the private
    tests is read."""
    tests = task.public_tests
    if not tests:
        return None
    failing = next((i for i, v in enumerate(verdicts) if v != "passed"), None)
    if failing is None:
        return None
    error = errors[failing] or verdicts[failing].replace("_", " ")
    head = "The program failed this test:\n"
    tail = f"\n\nError: {error}"
    where = _RAISED_AT.search(error)
    lines = source_lines(program)
    if where and 1 <= int(where[1]) <= len(lines):
        tail += f"\nLine {where[1]}: {lines[int(where[1]) - 1].strip()}"
    wanted = max(max_chars // 2, max_chars - len(head) - len(describe_test(tests, failing)))
    test = describe_test(tests, failing, max(max_chars - len(head) - min(len(tail), wanted), 0))
    return clip(head + test + clip(tail, max_chars - len(head) - len(test)), max_chars)


def public_feedback(
    executor: Any, jobs: Sequence[tuple[Task, str]], max_chars: int = 1000
) -> Iterator[tuple[int, Any, str | None]]:
    """Run each (task, program) of `jobs` whose task has public tests against them (`Task.public_view`) on
    `executor` (a pper `Executor`), all at once; yield, in job order, (index in `jobs`, its `ProgramResult` on the
    public tests, its `feedback_text`: None when it passed them). Jobs of tasks without public tests are skipped."""
    kept = [i for i, (task, _) in enumerate(jobs) if task.public_tests]
    results = executor.map((jobs[i][0].public_view(), jobs[i][1]) for i in kept)
    for i, result in zip(kept, results, strict=True):
        task, program = jobs[i]
        yield i, result, feedback_text(task, result.verdicts, [t.error for t in result.tests], program, max_chars)


def stop_index(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop sequence begins in `text`, if any."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def extract_program(prompt: Prompt, completion: str) -> str:
    """The runnable program for a completion (already cut at its stop sequence)."""
    if prompt.continues:
        return prompt.text + completion.rstrip() + "\n"
    return code_from_answer(prompt.given + completion)


def training_target(prompt: Prompt, program: str) -> str:
    """What the model should write after `prompt` to produce `program` (the inverse of `extract_program`):
    the program past the prompt for completion tasks, the program in a ```python block for instruction
    tasks, past the part of it the prompt gave (`Prompt.given`). The caller appends the end-of-text token."""
    if prompt.continues:
        if program.startswith(prompt.text):
            return program[len(prompt.text) :]
        return "\n" + program  # not a continuation of this prompt: the whole program, after the docstring
    answer = FENCE_OPEN + program.strip("\n") + "\n```"
    return answer[len(prompt.given) :] if answer.startswith(prompt.given) else answer


def target_program_offset(prompt: Prompt, program: str) -> int:
    """Where `training_target(prompt, program)` sits in `program`: target character i is program character
    i + offset, for the target's characters inside `program_span(prompt, target)` (the program's own code)."""
    if prompt.continues:
        return len(prompt.text) if program.startswith(prompt.text) else -1
    given = len(prompt.given) if (FENCE_OPEN + program.strip("\n")).startswith(prompt.given) else 0
    return len(program) - len(program.lstrip("\n")) - len(FENCE_OPEN) + given


def code_from_answer(answer: str) -> str:
    """The code in a chat answer: its first fenced block, else the longest stretch of lines that parses,
    with prose before and after dropped (`code_span` says where)."""
    start, end = code_span(answer)
    return answer[start:end] + "\n"


def code_span(answer: str) -> tuple[int, int]:
    """Where the code of a chat answer lies, as a character span [start, end) of `answer`: the body of its
    first fenced code block (the fence lines excluded, blank lines around the body trimmed); without a
    fence, the first longest stretch of whole lines that parses and has one of `=():` (leading blank lines
    and trailing whitespace trimmed); else the answer without its surrounding whitespace."""
    match = _FENCE.search(answer)
    if match:
        start, end = match.span(1)
        body = answer[start:end]
        lead = len(body) - len(body.lstrip("\n"))
        return start + lead, start + max(lead, len(body.rstrip("\n")))
    offsets = [0]  # offsets[i]: where line i begins; the last entry is the end of the answer
    for line in source_lines(answer, keepends=True):
        offsets.append(offsets[-1] + len(line))
    lines = len(offsets) - 1
    for first in range(lines):
        for last in range(lines, first, -1):
            start, end = offsets[first], offsets[last]
            chunk = answer[start:end]
            if chunk.strip() and _parses(chunk) and any(c in chunk for c in "=():"):
                start += len(chunk) - len(chunk.lstrip("\n"))
                return start, start + len(chunk.strip("\n").rstrip())
    start = len(answer) - len(answer.lstrip())
    return start, max(start, len(answer.rstrip()))


def program_span(prompt: Prompt, text: str) -> tuple[int, int]:
    """Where the program's own code lies in `text`, what the model writes after `prompt` (a sampled
    completion, or a `training_target`): the whole text for completion tasks (the program is the prompt
    plus it); for instruction tasks the code the program is extracted from (`code_span`), so the prose
    and the ``` fences around it are not part of it (found in the whole answer, `Prompt.given` included)."""
    if prompt.continues:
        return 0, len(text)
    if not prompt.given:
        return code_span(text)
    start, end = code_span(prompt.given + text)
    return max(start - len(prompt.given), 0), max(end - len(prompt.given), 0)


def program_token_range(prompt: Prompt, text: str, ends: Sequence[int]) -> tuple[int, int]:
    """The program's own tokens among the tokens of `text` (what the model wrote after `prompt`), as an
    index range [lo, hi); `ends[j]` is where token j's text ends in `text` (non-decreasing).

    Token j belongs to the program when it ends inside `program_span(prompt, text)` = [s, e):
    s < ends[j] <= e, so a token crossing a boundary counts for where it ends. When no token does (no
    code at all, e.g. an empty fenced block), every token counts, so that P(t) stays defined."""
    start, end = program_span(prompt, text)
    lo, hi = bisect.bisect_right(ends, start), bisect.bisect_right(ends, end)
    return (lo, hi) if hi > lo else (0, len(ends))


def program_tokens(tokenizer: Any, prompt: Prompt, ids: Sequence[int]) -> tuple[int, int]:
    """The program's own tokens among `ids`, the token ids the model writes after `prompt` (a sampled
    completion, or a tokenized `training_target` with its end-of-text token), as an index range [lo, hi)
    of `ids`: `program_token_range` over the text of `ids` up to their first special token (end of text,
    and what follows, never counts), token ends measured by decoding prefixes (O(log n) decodes).

    The one definition for sampling and training: P(t) and the token count of a program are its token
    log-probabilities summed, and counted, over exactly ids[lo:hi]. For completion tasks that is every
    token before end of text; for instruction tasks the code, without the prose and fences around it."""
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    ids = list(ids)
    ids = ids[: next((j for j, t in enumerate(ids) if t in special), len(ids))]
    return program_token_range(prompt, tokenizer.decode(ids), _DecodedEnds(tokenizer, ids))


class _DecodedEnds(Sequence[int]):
    """ends[j] = len(decode(ids[:j+1])), decoded only when asked (bisection reads a few)."""

    def __init__(self, tokenizer: Any, ids: list[int]):
        self.tokenizer, self.ids = tokenizer, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, j):  # type: ignore[override]
        return len(self.tokenizer.decode(self.ids[: j + 1]))


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True
