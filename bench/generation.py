"""Sampling throughput: pper's beam-search sampler against a plain loop of `model.generate`, same run.

Baseline (named "plain generate"): for one task at a time, `model.generate` with the same settings (beam
width k, the same stop strings, max_new_tokens, float32), its sequences cut at the stop as pper cuts them.
pper: `TransformersSampler` (batches of --batch-size tasks sorted by prompt length, its own decoding loop
that drops finished tasks, per-token log-probabilities kept on the way). Tokens are the tokens of the
distinct programs produced. Each part runs in its own process, so its peak memory (max RSS) is its own.
A greedy pass of both checks that they produce the same programs.

    python bench/generation.py [--tasks 32] [--k 3] [--batch-size 8] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_part(part: str, args: argparse.Namespace) -> dict:
    from pper.generation import load_model
    from pper.generation.hf import TransformersSampler
    from pper.generation.prompts import build_prompt
    from pper.tasks import load_tasks

    dtype = args.dtype if part == "pper" else "float32"
    model, tokenizer, name = load_model("default", dtype)
    tasks = load_tasks("humaneval", limit=args.tasks)
    sampler = TransformersSampler(
        model, tokenizer, name, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    mode, k = (args.mode, args.k) if args.mode == "beam" else ("greedy", 1)
    outputs: dict[str, list[list[int]]] = {}
    start = time.perf_counter()
    if part == "pper":
        for task, candidates in sampler.sample(tasks, mode, k):
            outputs[task.id] = [list(c.tokens) for c in candidates]
    else:
        import torch

        for task in tasks:
            prompt = build_prompt(task, tokenizer)
            enc = tokenizer(prompt.text, return_tensors="pt")
            options = {"num_beams": k, "num_return_sequences": k} if k > 1 else {}
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    stop_strings=list(prompt.stops) or None,
                    tokenizer=tokenizer,
                    **options,
                )
            kept = []
            for row in out[:, enc.input_ids.shape[1] :].tolist():
                row = row[: next((i for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))]
                row = sampler._until_stop(row, prompt.stops)
                if row and row not in kept:
                    kept.append(row)
            outputs[task.id] = kept
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "programs": sum(len(v) for v in outputs.values()),
        "tokens": sum(len(s) for v in outputs.values() for s in v),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "outputs": outputs,
    }


def child(part: str, args: argparse.Namespace, mode: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--part",
        part,
        "--mode",
        mode,
        "--tasks",
        str(args.tasks),
        "--k",
        str(args.k),
        "--batch-size",
        str(args.batch_size),
        "--dtype",
        args.dtype,
        "--max-new-tokens",
        str(args.max_new_tokens),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{part} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--mode", default="beam", choices=["beam", "greedy"])
    parser.add_argument("--part", choices=["plain", "pper"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args)))
        return
    print(f"{args.tasks} HumanEval tasks, SmolLM2-135M-Instruct, beam {args.k}, max {args.max_new_tokens} new tokens")
    results = {}
    for part in ("plain", "pper"):
        r = results[part] = child(part, args, "beam")
        label = (
            "plain generate, one task at a time"
            if part == "plain"
            else f"pper, batches of {args.batch_size} ({args.dtype})"
        )
        print(
            f"{label:40s}: {r['tokens'] / r['seconds']:6.1f} tokens/s, {r['programs'] / r['seconds']:5.2f} programs/s, "
            f"{r['seconds']:6.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    plain, pper = results["plain"], results["pper"]
    tokens_ratio = (pper["tokens"] / pper["seconds"]) / (plain["tokens"] / plain["seconds"])
    programs_ratio = (pper["programs"] / pper["seconds"]) / (plain["programs"] / plain["seconds"])
    print(f"ratio pper / plain generate: {tokens_ratio:.2f}x tokens/s, {programs_ratio:.2f}x programs/s")
    same_beam = sum(plain["outputs"][t] == pper["outputs"][t] for t in plain["outputs"])
    print(f"beam outputs identical on {same_beam} of {args.tasks} tasks")
    greedy = {part: child(part, args, "greedy") for part in ("plain", "pper")}
    same = sum(greedy["plain"]["outputs"][t] == greedy["pper"]["outputs"][t] for t in greedy["plain"]["outputs"])
    print(
        f"greedy outputs identical on {same} of {args.tasks} tasks "
        f"(plain {greedy['plain']['seconds']:.1f} s, pper {greedy['pper']['seconds']:.1f} s)"
    )


if __name__ == "__main__":
    main()
