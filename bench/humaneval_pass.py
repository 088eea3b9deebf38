"""HumanEval pass counts of the default model: greedy top-1, beam top-1 and any of the k beams, all 164 tasks.

Programs come from pper's sampler and are judged by pper's own testing phase (the sandbox).

    python bench/humaneval_pass.py [--k 3] [--dtype float32] [--batch-size 8] [--limit N]
"""

from __future__ import annotations

import argparse
import time

from pper.execution import Executor
from pper.generation import load_model
from pper.generation.hf import TransformersSampler
from pper.tasks import load_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    model, tokenizer, name = load_model("default", args.dtype)
    tasks = load_tasks("humaneval", limit=args.limit)
    sampler = TransformersSampler(
        model, tokenizer, name, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    with Executor() as executor:
        for mode, k in (("greedy", 1), ("beam", args.k)):
            start = time.perf_counter()
            sampled = list(sampler.sample(tasks, mode, k))
            seconds = time.perf_counter() - start
            top1 = anyk = 0
            for task, candidates in sampled:
                results = [executor.run(task, c.program) for c in candidates]
                top1 += bool(results) and results[0].all_passed
                anyk += any(r.all_passed for r in results)
            distinct = sum(len(c) for _, c in sampled) / len(sampled)
            print(
                f"{mode} (k={k}, {args.dtype}): top-1 passes {top1} of {len(tasks)}"
                + (f", any of the beams {anyk}, {distinct:.2f} distinct programs per task" if k > 1 else "")
                + f"; sampling took {seconds:.0f} s"
            )


if __name__ == "__main__":
    main()
