"""Curriculum completions with and without the prefill stop strings, same model, same tasks, same run.

The first `--tasks` MBPP training tasks, each posed at stage 1 of a 2-stage curriculum (the reference minus the
last half of its statements, prefilled after ```python in the assistant's turn), sampled with beam search of
width `--k` and at most `--max-new-tokens` tokens, as configs/experiments/stepcoder.yaml samples them:
* without: `curriculum.prefill_stops: false`, as pper sampled them before the stop strings (the completion runs
  to end of text or the token cap);
* with: the default (`prompts.stops_for_prefix`: the closing fence, a top-level print(/assert/if __name__, a
  redefinition of a function the prefix defines).
Every program is tested in pper's sandbox. Rows: programs, programs defining a top-level function twice, programs
at the token cap, programs passing a test, passing all, tasks solved, generated tokens, seconds. The last line
gives the share repeating a def without and with the stop strings, and their ratio. Checks (exit status 1 when
one fails): no kept completion with stops contains one of its prompt's stop strings; every program with stops
begins with its prefix.

    python bench/prefill_stops.py [--tasks 60] [--k 3] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from pper.curriculum import CurriculumConfig, stage_prefix
from pper.execution import Executor
from pper.generation import load_model
from pper.generation.hf import TransformersSampler
from pper.generation.prompts import build_prompt, stop_index
from pper.tasks import load_tasks

_DEF = re.compile(r"^def (\w+)\(", re.M)


def repeats(program: str) -> bool:
    """Whether the program defines a top-level function name twice or more."""
    names = _DEF.findall(program)
    return len(names) != len(set(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mbpp", default="../shared/data/mbpp.jsonl")
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    tasks = load_tasks(f"mbpp:{args.mbpp}", split="train", limit=args.tasks)
    by_id = {t.id: t for t in tasks}
    stages = CurriculumConfig(enabled=True, stages=2)
    model, tokenizer, name = load_model("default")
    prefixes = [stage_prefix(t, 1, stages) for t in tasks]
    failures: list[str] = []
    rows = {}
    with Executor() as executor:
        for variant in ("without", "with"):
            sampler = TransformersSampler(model, tokenizer, name, args.batch_size, args.max_new_tokens)
            given = [build_prompt(t, tokenizer, x, variant == "with") for t, x in zip(tasks, prefixes, strict=True)]
            start = time.perf_counter()
            found = [(given[i], c) for i, cs in sampler.sample_prompts(given, "beam", args.k) for c in cs]
            seconds = time.perf_counter() - start
            results = [executor.run(by_id[c.task_id], c.program) for _, c in found]
            if variant == "with":
                for prompt, c in found:
                    if stop_index(c.completion, prompt.stops) is not None:
                        failures.append(f"{c.task_id}: a completion runs past its stop string")
                    if not c.program.startswith(prompt.prefix.rstrip()):
                        failures.append(f"{c.task_id}: the program does not begin with its prefix")
            rows[variant] = {
                "programs": len(found),
                "repeat a def": sum(repeats(c.program) for _, c in found),
                "at the cap": sum(c.num_tokens >= args.max_new_tokens - 2 for _, c in found),
                "pass a test": sum(r.passed > 0 for r in results),
                "pass all": sum(r.all_passed for r in results),
                "tasks solved": len({c.task_id for (_, c), r in zip(found, results, strict=True) if r.all_passed}),
                "tokens generated": sampler.generated_tokens,
                "seconds": round(seconds),
            }
    print(f"{args.tasks} MBPP training tasks at curriculum stage 1 of 2, beam k={args.k}, {name}")
    print(f"{'':18s}{'without':>10s}{'with':>10s}")
    for key in rows["with"]:
        print(f"{key:18s}{rows['without'][key]:>10}{rows['with'][key]:>10}")
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"checks: {'all passed' if not failures else f'{len(failures)} failed'}")
    share = {v: rows[v]["repeat a def"] / max(rows[v]["programs"], 1) for v in rows}
    ratio = f"{share['without'] / share['with']:.1f}x" if share["with"] else "all gone with them"
    print(f"share repeating a def: without {share['without']:.1%}, with {share['with']:.1%} stop strings ({ratio})")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
