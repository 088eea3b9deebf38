"""Sampling throughput: pper's transformers sampler against transformers' batched `generate`, same run.

Both decode the same batches of prompts (pper's batching: longest first; HumanEval's prompts share their stop
strings) with the default model, float32, the default `max_new_tokens` and beam width, at batch size 1 and at
the default batch size; batches alternate which of the two runs first.
- baseline: `model.generate` on the left-padded batch, greedy (`do_sample=False`) or beam search
  (`num_beams=k, num_return_sequences=k`), pper's stop strings (`stop_strings`), with
  `return_dict_in_generate=True, output_scores=True` and `compute_transition_scores` for the log-probabilities
  a user needs; each sequence is then cut at end of text and at its stop string as pper cuts it, and equal
  beams are kept once.
- pper: `TransformersSampler.sample` (its own decoding loop: prompts prefilled without padding, rows of a
  task dropped as soon as it is finished, per-token log-probabilities kept on the way, programs extracted).
Tokens are the kept tokens of the programs returned. Checks (the bench exits 1 if one fails): greedy outputs
identical; beam outputs identical except where the hypothesis scores tie (both sides' ranked beam scores
equal within 1e-4, so either choice is right); each program's logP equal to the sum of generate's
transition scores over its program tokens within 5e-4 per token. A reference row gives llama.cpp's greedy tokens/s
with log-probabilities (llama-cpp-python on the package's Q4_1 GGUF, the first --llama-cpp-tasks tasks one at
a time; not the same weights, so not compared). pper's sampling must report no deprecation (of
`past_key_values` or else): checked too. The last line is the ratio for beam search at the default batch size.

    python bench/generation.py [--tasks 16] [--k 3] [--batch-size 32] [--max-new-tokens 300] [--llama-cpp-tasks 4]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SCORE_TIE = 1e-4  # beam scores closer than this are a tie
# |pper's logP - generate's| per program token: compute_transition_scores's log_softmax over the strided vocab
# dimension is about 1e-4 per token off the model's own log_softmax (pper's agrees with a plain forward pass to
# ~1e-6 per token, tests/test_generation_sampling.py), and padded and unpadded float32 differ slightly
LOGPROB_TOLERANCE = 5e-4


@dataclass
class Part:
    seconds: float = 0.0
    tokens: int = 0
    outputs: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    logprobs: dict[str, list[float]] = field(default_factory=dict)
    program_tokens: dict[str, list[int]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    deprecations: list[str] = field(default_factory=list)


@contextlib.contextmanager
def capture_logs(name: str) -> Iterator[list[str]]:
    """The messages logged under `name` while inside."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def recording_sampler(loaded: Any, batch_size: int, max_new_tokens: int) -> Any:
    """pper's sampler, keeping each task's ranked beam scores for the tie check (no extra decoding)."""
    from pper.generation.hf import TransformersSampler

    class Recording(TransformersSampler):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.scores: dict[str, list[float]] = {}

        def _decode(self, batch, mode, k, generator):
            found = super()._decode(batch, mode, k, generator)
            for prompt, hypotheses in zip(batch, found, strict=True):
                self.scores[prompt.task.id] = [score for score, _, _ in hypotheses]
            return found

    model, tokenizer, name = loaded
    return Recording(model, tokenizer, name, batch_size=batch_size, max_new_tokens=max_new_tokens)


def run_pper(sampler: Any, batch: list, mode: str, k: int, part: Part) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # a deprecation said once per process is said again
    with warnings.catch_warnings(record=True) as caught, capture_logs("transformers") as logs:
        warnings.simplefilter("always")
        start = time.perf_counter()
        results = list(sampler.sample([p.task for p in batch], mode, k))
        part.seconds += time.perf_counter() - start
    part.deprecations += [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    part.deprecations += [m for m in logs if "deprecat" in m.lower()]
    for task, candidates in results:
        part.outputs[task.id] = [c.tokens for c in candidates]
        part.logprobs[task.id] = [c.logprob for c in candidates]
        part.scores[task.id] = sampler.scores[task.id]
        part.tokens += sum(len(c.tokens) for c in candidates)


def run_generate(sampler: Any, batch: list, mode: str, k: int, part: Part) -> None:
    import torch

    from pper.generation.prompts import program_tokens

    model, tokenizer = sampler.model, sampler.tokenizer
    assert all(p.stops == batch[0].stops for p in batch), "generate takes one set of stop strings per batch"
    start = time.perf_counter()
    encoded = tokenizer([p.text for p in batch], return_tensors="pt", padding=True).to(sampler.device)
    beam = {"num_beams": k, "num_return_sequences": k} if mode == "beam" else {}
    with torch.inference_mode():
        out = model.generate(
            **encoded,
            max_new_tokens=sampler.max_new_tokens,
            do_sample=False,
            stop_strings=list(batch[0].stops) or None,
            tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_scores=True,
            **beam,
        )
        steps = model.compute_transition_scores(
            out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=mode != "beam"
        )
    width = k if mode == "beam" else 1
    prompt_length = encoded.input_ids.shape[1]
    for i, prompt in enumerate(batch):
        kept, logprobs, counts = [], [], []
        for row in range(i * width, (i + 1) * width):
            tokens = out.sequences[row, prompt_length:].tolist()
            tokens = tokens[: next((j for j, t in enumerate(tokens) if t == tokenizer.eos_token_id), len(tokens))]
            tokens = tuple(sampler.until_stop(tokens, prompt.stops)[0])
            if tokens and tokens not in kept:
                kept.append(tokens)
                lo, hi = program_tokens(tokenizer, prompt, tokens)
                logprobs.append(float(steps[row, lo:hi].sum()))
                counts.append(hi - lo)
        part.outputs[prompt.task.id], part.logprobs[prompt.task.id] = kept, logprobs
        part.program_tokens[prompt.task.id] = counts
        if mode == "beam":
            part.scores[prompt.task.id] = out.sequences_scores[i * width : (i + 1) * width].tolist()
        part.tokens += sum(len(t) for t in kept)
    part.seconds += time.perf_counter() - start


def compare(pper: Part, generate: Part, mode: str) -> tuple[int, int, float, list[str]]:
    """(tasks identical, differing tasks excused by a tie, largest logP difference per program token, failures)."""
    same, ties, worst, failures = 0, 0, 0.0, []
    for task_id, ours in pper.outputs.items():
        theirs = generate.outputs[task_id]
        if ours == theirs:
            same += 1
            pairs = zip(
                pper.logprobs[task_id], generate.logprobs[task_id], generate.program_tokens[task_id], strict=True
            )
            for a, b, n in pairs:
                worst = max(worst, abs(a - b) / max(n, 1))
            continue
        a, b = pper.scores[task_id], generate.scores.get(task_id, [])
        if mode == "beam" and len(a) == len(b) and all(abs(x - y) <= SCORE_TIE for x, y in zip(a, b, strict=True)):
            ties += 1
        else:
            failures.append(f"{mode}: {task_id} differs (pper scores {a}, generate {b})")
    failures += [f"{mode}: pper's sampling reported a deprecation: {m}" for m in sorted(set(pper.deprecations))]
    if worst > LOGPROB_TOLERANCE:
        failures.append(f"{mode}: logP differs from compute_transition_scores by {worst:.1e} per token")
    return same, ties, worst, failures


def llama_cpp_row(args: argparse.Namespace) -> str:
    """The llama.cpp reference row, measured in a child process (a crash of the native library is reported,
    not fatal)."""
    if args.llama_cpp_tasks < 1:
        return "llama.cpp greedy with logprobs: skipped (--llama-cpp-tasks 0)"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama.cpp greedy with logprobs: skipped (llama-cpp-python is not installed; it is in the dev group)"
    cmd = [
        sys.executable,
        __file__,
        "--llama-cpp",
        "--tasks",
        str(min(args.tasks, args.llama_cpp_tasks)),
        "--max-new-tokens",
        str(args.max_new_tokens),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return f"llama.cpp greedy with logprobs: failed (exit {done.returncode}) {done.stderr[-500:]}"
    return done.stdout.strip().splitlines()[-1]


def measure_llama_cpp(args: argparse.Namespace) -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as native
    import torch

    from pper.generation.models import embedded_gguf
    from pper.generation.prompts import build_prompt
    from pper.tasks import load_tasks

    defaults = native.llama_model_default_params

    def without_extra_buffers():  # llama.cpp's CPU repacking buffers crash on this machine's CPU (SIGSEGV)
        params = defaults()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_extra_buffers
    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(str(embedded_gguf()), n_ctx=2048, logits_all=True, verbose=False, n_threads=threads)
    tokens, seconds = 0, 0.0
    for task in load_tasks("humaneval", limit=args.tasks):
        prompt = build_prompt(task)
        start = time.perf_counter()
        out = llm.create_completion(
            prompt.text, max_tokens=args.max_new_tokens, temperature=0.0, logprobs=1, stop=list(prompt.stops) or None
        )
        seconds += time.perf_counter() - start
        tokens += out["usage"]["completion_tokens"]
    print(
        f"llama.cpp greedy with logprobs (Q4_1 GGUF, {args.tasks} tasks one at a time, {threads} threads; reference): "
        f"{tokens / seconds:.1f} tokens/s, {seconds:.0f} s"
    )


def main() -> None:
    from pper.generation import build_prompt, load_model
    from pper.generation.config import GenerationConfig
    from pper.tasks import load_tasks

    defaults = GenerationConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16, help="HumanEval tasks (the default job's source)")
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--llama-cpp-tasks", type=int, default=4, help="tasks of the llama.cpp reference row")
    parser.add_argument("--llama-cpp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llama_cpp:
        return measure_llama_cpp(args)

    import torch

    loaded = load_model("default", "float32")
    tasks = load_tasks("humaneval", limit=args.tasks)
    warm = recording_sampler(loaded, 1, 4)  # first calls pay one-time costs: pay them before timing
    for run in (run_pper, run_generate):
        run(warm, [build_prompt(tasks[0], loaded[1])], "greedy", 1, Part())
    print(
        f"{args.tasks} HumanEval tasks, SmolLM2-135M-Instruct float32, {torch.get_num_threads()} torch threads, "
        f"beam k={args.k}, max {args.max_new_tokens} new tokens"
    )
    print(f"{'mode':7s}{'batch':>6s}{'pper tok/s':>12s}{'generate tok/s':>16s}{'ratio':>7s}  checks")
    failures: list[str] = []
    headline = None
    for mode in ("greedy", "beam"):
        k = args.k if mode == "beam" else 1
        for batch_size in sorted({1, args.batch_size}):
            sampler = recording_sampler(loaded, batch_size, args.max_new_tokens)
            pper, generate = Part(), Part()
            prompts = [build_prompt(t, loaded[1]) for t in tasks]
            for i, batch in enumerate([prompts[j] for j in b] for b in sampler.batches(prompts)):
                order = (run_pper, run_generate) if i % 2 == 0 else (run_generate, run_pper)
                for run in order:
                    run(sampler, batch, mode, k, pper if run is run_pper else generate)
            same, ties, worst, failed = compare(pper, generate, mode)
            failures += failed
            ours, theirs = pper.tokens / pper.seconds, generate.tokens / generate.seconds
            ratio = ours / theirs
            print(
                f"{mode:7s}{batch_size:6d}{ours:12.1f}{theirs:16.1f}{ratio:6.2f}x  identical {same}/{len(tasks)}"
                + (f", {ties} beam ties" if ties else "")
                + f", logP |diff| <= {worst:.1e}/token ({pper.seconds:.0f} s vs {generate.seconds:.0f} s)",
                flush=True,
            )
            if mode == "beam" and batch_size == args.batch_size:
                headline = ratio
    print(llama_cpp_row(args), flush=True)
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"checks: {'all passed' if not failures else f'{len(failures)} failed'}")
    print(f"tokens/s vs batched generate: {headline:.2f}x")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
