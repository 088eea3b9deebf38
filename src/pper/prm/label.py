"""`pper prm label`: line labels for a run's tested programs by binary search over their prefixes
(`pper.prm.search`), written into the run's buffer (`line_searches`, `line_labels`).

Per program: a program that passes every test has every line labelled 1 without a probe. Otherwise c(j), "the
first j lines can still be completed into a program that passes", is probed with the completer:

* reference: the rest of a reference whose first lines equal the prefix (`completers.reference_completions`);
* model: `completions` samples of the prefix, given to the model as a curriculum prefix is (after the task's
  code prompt for a completion task, after the opening fence of the answer for an instruction task);
* teacher: `completions` samples from a model behind an OpenAI-compatible API: a completion task's prefix is
  continued by the completions endpoint, an instruction task's is asked for in a chat
  (`generation.prompts.continuation_prompt`), the program being the code of the reply;

and c(j) holds when any completion passes every test in the sandbox. Lines up to `known` need no probe: a
completion task's prompt lines (the task is taken as solvable) and the lines the program shares with a
reference that passes. A model completion counts only if it keeps the prefix's lines (it may not rewrite line
j). Each program's search and labels are one transaction, so a killed labelling resumes with the programs it had
not finished; `max_programs` and `max_probes` bound one invocation (the probe budget is checked between
programs: the last program may overrun it by its own 1 + ceil(log2 m) probes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..buffer import LineSearch, Program, ReplayBuffer
from ..errors import PperError
from ..source import source_lines
from ..tasks import Task
from .completers import keeps_prefix, reference_completes, shared_lines
from .config import PrmConfig
from .search import contradictions, first_bad_line


@dataclass(frozen=True)
class Filter:
    """Which tested programs to label: `model` (the sampler name contains it), `stage` (sampled at this curriculum
    stage; 0: given no prefix), pass rate within [min_pass_rate, max_pass_rate]."""

    model: str | None = None
    stage: int | None = None
    min_pass_rate: float = 0.0
    max_pass_rate: float = 1.0

    def __post_init__(self) -> None:
        if self.min_pass_rate > self.max_pass_rate:
            raise PperError(
                f"the pass-rate filter [{self.min_pass_rate}, {self.max_pass_rate}] is empty: min_pass_rate must "
                "not exceed max_pass_rate"
            )


@dataclass
class LabelSummary:
    """What one `label_programs` did: programs labelled now (and found already labelled), probes run, the labels'
    class balance, seconds, and whether a budget stopped it."""

    labelled: int = 0
    already: int = 0
    skipped: int = 0  # programs of tasks without a reference, with the reference completer alone
    probes: int = 0
    good_lines: int = 0
    bad_lines: int = 0
    contradicted: int = 0  # programs with a probe contradicting monotonicity (`pper.prm.search.contradictions`)
    seconds: float = 0.0
    stopped_by: str | None = None

    @property
    def balance(self) -> float | None:
        """The share of labels that are 1."""
        total = self.good_lines + self.bad_lines
        return self.good_lines / total if total else None


def selected(buffer: ReplayBuffer, which: Filter) -> list[Program]:
    """The tested programs `which` selects, oldest first."""
    programs = buffer.programs()
    stages: dict[tuple[str, int], int] = {}
    if which.stage is not None:
        for r in {p.round for p in programs}:
            stages.update({(task, r): s for task, s in buffer.stages(r).items()})
    out = []
    for p in programs:
        if p.result is None or not which.min_pass_rate <= p.pass_rate <= which.max_pass_rate:
            continue
        if which.model is not None and which.model not in p.model:
            continue
        if which.stage is not None and (stages.get((p.task_id, p.round), 0) if p.prefix else 0) != which.stage:
            continue
        out.append(p)
    return out


def model_prefix(task: Task, prefix_lines: list[str]) -> str | None:
    """The prefix of j program lines as the sampler takes it (`generation.prompts.build_prompt`); None when the
    lines do not extend a completion task's prompt."""
    text = "\n".join(prefix_lines)
    if task.prompt_style != "completion":
        return text
    head = task.prompt.rstrip()
    return text[len(head) :] if text.startswith(head) else None


def completions(sampler: Any, task: Task, given: str, n: int, chat: bool = False) -> Any:
    """`n` sampled completions of the prefix `given` (`model_prefix`): continued by the model, or, with `chat`
    (a teacher's chat API, which cannot be prefilled), for an instruction task with a prefix, asked for in a
    chat (`continuation_prompt`); (task, candidates) pairs as the samplers give them."""
    if chat and given and task.prompt_style != "completion":
        from ..generation.prompts import continuation_prompt

        return ((task, c) for _, c in sampler.sample_prompts([continuation_prompt(task, given)], "sample", n))
    return sampler.sample([task], "sample", n, prefixes={task.id: given})


def label_program(
    task: Task,
    program: Program,
    executor: Any,
    config: PrmConfig,
    sampler: Any = None,
    count: Callable[[], None] = lambda: None,
    reference_passes: bool | None = None,
) -> LineSearch:
    """The line search of one tested program (see the module's docstring); `count()` is called at each probe;
    `reference_passes`: whether the task's first reference passes (None: run it)."""
    start = time.perf_counter()
    lines = source_lines(program.text)
    use_reference = config.completer.startswith("reference") or (config.completer == "auto" and bool(task.solutions))
    sampled = "teacher" if "teacher" in config.completer else "model"
    use_model = config.completer != "reference" and (config.completer != "auto" or sampler is not None)
    known = 0
    if task.prompt_style == "completion" and program.text.startswith(task.prompt.rstrip()):
        known = len(source_lines(task.prompt.rstrip()))
    if reference_passes is None and use_reference and task.solutions:
        reference_passes = executor.run(task, task.solutions[0]).all_passed
    if use_reference and reference_passes:  # lines shared with the reference that passes need no probe
        known = max(known, shared_lines(lines, source_lines(task.solutions[0])))

    witnesses: dict[int, int] = {}  # probe j -> the program's lines its passing model completion kept

    def completable(j: int) -> bool:
        count()
        prefix = lines[:j]
        if use_reference and reference_completes(task, prefix, executor):
            return True
        if use_model and sampler is not None:
            given = model_prefix(task, prefix)
            if given is not None:
                for _, candidates in completions(sampler, task, given, config.completions, chat=sampled == "teacher"):
                    # a completion that rewrites line j (it may continue it) does not complete this prefix
                    kept = [c for c in candidates if keeps_prefix(c.program, prefix)]
                    passing = [c for c in kept if executor.run(task, c.program).all_passed]
                    if passing:
                        witnesses[j] = max(shared_lines(lines, source_lines(c.program)) for c in passing)
                        return True
        return False

    search = first_bad_line(len(lines), completable, known, passes=program.result.all_passed)
    completer = "+".join(name for name, used in (("reference", use_reference), (sampled, use_model)) if used)
    return LineSearch(
        program.id,
        search.first_bad,
        search.probes,
        completer or "none",
        config.completions if use_model else 0,
        time.perf_counter() - start,
        tuple(search.labels),
        contradictions(search.probes, witnesses),
    )


def label_programs(
    buffer: ReplayBuffer,
    executor: Any,
    config: PrmConfig,
    which: Filter = Filter(),
    sampler: Any = None,
    show_progress: bool = False,
) -> LabelSummary:
    """Label the selected programs not labelled yet, within the budget of `config`; see the module's docstring."""
    start = time.perf_counter()
    summary = LabelSummary()
    done = set(buffer.line_searches())
    programs = selected(buffer, which)
    summary.already = sum(p.id in done for p in programs)
    todo = [p for p in programs if p.id not in done]
    tasks = {t.id: t for t in buffer.tasks()}
    if config.completer == "reference":  # nothing could complete the prefixes of a task without a reference
        summary.skipped = sum(not tasks[p.task_id].solutions for p in todo)
        todo = [p for p in todo if tasks[p.task_id].solutions]
    if config.max_programs is not None and len(todo) > config.max_programs:  # counts programs it can label
        todo, summary.stopped_by = todo[: config.max_programs], "max_programs"

    def count() -> None:
        summary.probes += 1

    items: Any = todo
    if show_progress:
        from ..progress import progress

        items = progress(todo, len(todo), "labelling", "programs")
    passes: dict[str, bool] = {}  # task id -> its reference passes, run once per task
    uses_reference = config.completer.startswith("reference") or config.completer == "auto"
    for program in items:
        if config.max_probes is not None and summary.probes >= config.max_probes:  # checked between programs:
            summary.stopped_by = "max_probes"  # the last one may overrun by its own 1 + ceil(log2 m) probes
            break
        task = tasks[program.task_id]
        if uses_reference and task.solutions and task.id not in passes:
            passes[task.id] = executor.run(task, task.solutions[0]).all_passed
        search = label_program(task, program, executor, config, sampler, count, passes.get(task.id))
        buffer.add_line_labels(search)
        summary.labelled += 1
        summary.good_lines += sum(search.labels)
        summary.bad_lines += len(search.labels) - sum(search.labels)
        summary.contradicted += bool(search.contradictions)
    summary.seconds = time.perf_counter() - start
    return summary


def label_run(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    which: Filter = Filter(),
    model: str | None = None,
    show_progress: bool = True,
) -> LabelSummary:
    """`pper prm label RUN`: label the run's selected programs with its `prm` settings (`overrides` replace some),
    the run's execution settings, and, where the completer samples, `model` (default: the run's kept model once
    it has one, else its configured model) or the teacher (`prm.teacher`, else `generation.teacher`)."""
    from ..execution import open_executor
    from ..generation import load_model, teacher_sampler, transformers_sampler
    from ..pipeline import BUFFER_FILE, MODEL_DIR, read_kept, run_config_with_buffer

    run_dir = Path(run_dir)
    run_config = run_config_with_buffer(run_dir)
    config = run_config.prm.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    config = PrmConfig.model_validate(config.model_dump())
    sampler = None
    if "teacher" in config.completer:
        teacher = config.teacher or run_config.generation.teacher
        if teacher is None:
            raise PperError(
                f"prm.completer {config.completer} needs a teacher: set prm.teacher (base_url, model) or "
                "generation.teacher in the run's config"
            )
        sampler = teacher_sampler(run_config.generation.model_copy(update={"teacher": teacher}), run_config.seed)
    elif config.completer != "reference":
        if model is None:
            model = str(run_dir / MODEL_DIR) if read_kept(run_dir) else run_config.generation.model
        sampler = transformers_sampler(
            run_config.generation, run_config.seed, load_model(model, run_config.generation.dtype)
        )
    with ReplayBuffer(run_dir / BUFFER_FILE) as buffer, open_executor(run_config.execution) as executor:
        return label_programs(buffer, executor, config, which, sampler, show_progress)
