"""Training throughput, like for like: pper's PPER step against `transformers.Trainer` and TRL's `SFTTrainer`.

LoRA against LoRA and full fine-tuning against full, on the same minibatches of the same token ids. The
replayed programs: a buffer of HumanEval programs made here (each task's canonical solution and two wrong
variants of it, tested in pper's sandbox, P(t) under the default model), or the buffer of a run (--run DIR).
`--steps` minibatches of `--batch-size` programs are drawn once by rank-based PPER, turned into training
examples once (`build_example`: the sampling prompt, the program, end of text; loss on the program tokens
only; cut at `--max-length`), and fed in the same order to every part:

* pper: `PPERTrainer.train_step` with its default configuration: the minibatch packed into one unpadded row
  (`training.micro_batch_size`, or `--micro-batch-size`), attention computed within each example
  (`pper.training.attention`), logits only at target positions.
* "Trainer": plain `transformers.Trainer` on the token ids with the prompt labels at -100, batches padded by
  `DataCollatorForSeq2Seq` (dynamic padding), sequential sampler.
* "TRL SFTTrainer": a pre-tokenized prompt-completion dataset (`input_ids`, `completion_mask`) with
  `completion_only_loss=True` and `padding_free=True`: each minibatch is one unpadded row with position ids
  restarting per example (supported on CPU: transformers builds the block-diagonal mask from the position
  ids; packing across examples would change which programs share a step, so it is off), TRL's fused chunked
  LM head for the loss, gradient checkpointing off (TRL's default is on), sequential sampler.

Trainer and TRL run in each layout of `--hf-batch` (default: the whole minibatch in one forward pass, and one
program per pass with 8 accumulation steps) and their fastest run counts: which one wins depends on the load
(on the 2-core development machine, LoRA, float32: idle, Trainer 141 tokens/s with 1 per pass against 102-128
with 8, TRL 107 against 117-129; under a load of 6-10, Trainer 9.2 against 18.5, TRL 5.9 against 29.0).

Shared by all parts: the model (SmolLM2-135M-Instruct), the LoRA settings (pper's defaults: r 16, alpha 32,
all linear layers), AdamW at `--learning-rate` with weight decay 0, linear decay without warm-up, gradient
clipping at 1.0, `--precision` (float32, or bfloat16 autocast for all), `--batch-size` programs per optimiser
step (Trainer and TRL: `--hf-batch` per forward pass, with gradient accumulation up to the step), no
evaluation, no checkpoints, no logging or progress bars.

Each part runs in its own process (its peak RSS is its own), parts one after another, `--repeat` times in
alternating order (A B C, then C B A, ...); each part's fastest run is reported, since a shared machine's load
only ever slows a run down (every run is printed too, and checked). The first step is a warm-up: tokens/s =
the tokens of steps 2..n over the wall time from the end of step 1 to the end of step n (data loading and
everything a library does between steps included). Tokens are the prompt and program
tokens of the minibatch (padding not counted). Correctness checks (the bench exits 1 when one fails): every
part trains on the same tokens and the same target tokens at every step; the first-step losses agree
(LoRA starts as the base model) and, for full fine-tuning, the losses of every step agree, within tolerance.

    python bench/training.py [--steps 4] [--repeat 2] [--batch-size 8] [--tasks 32] [--run RUN_DIR]
        [--precision float32] [--parts pper-lora,trainer-lora,trl-lora,pper-full,trainer-full,trl-full]
        [--hf-batch 8,1] [--micro-batch-size N]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("pper-lora", "trainer-lora", "trl-lora", "pper-full", "trainer-full", "trl-full")
LABELS = {"pper": "pper", "trainer": "Trainer", "trl": "TRL SFTTrainer"}
FIRST_LOSS_RTOL = {"float32": 1e-3, "bfloat16": 2e-2}
FULL_LOSS_RTOL = {"float32": 1e-2, "bfloat16": 5e-2}


# -- the replayed programs ----------------------------------------------------------------------------------------


def wrong_variants(task) -> list[str]:
    """Two wrong programs for a HumanEval task: the canonical body with its first `1` turned into `2` (or its
    first `return` negated), and a body that returns None."""
    body = task.solutions[0][len(task.prompt) :]
    mutated = (
        re.sub(r"\b1\b", "2", body, count=1) if re.search(r"\b1\b", body) else body.replace("return ", "return not ", 1)
    )
    return [task.prompt + mutated, task.prompt + "    return None\n"]


def build_buffer(path: Path, n_tasks: int, max_length: int) -> None:
    """HumanEval canonical solutions and their wrong variants, tested, with P(t) under the default model."""
    from pper.buffer import NewProgram, ReplayBuffer
    from pper.execution import Executor
    from pper.generation import load_model
    from pper.pipeline import execute_untested
    from pper.tasks import load_tasks
    from pper.training import program_logprobs

    tasks = load_tasks("humaneval", limit=n_tasks)
    programs = [(t, text) for t in tasks for text in [t.solutions[0], *wrong_variants(t)]]
    model, tokenizer, name = load_model("default")
    logprob, count = program_logprobs(model, tokenizer, programs, max_length)
    del model
    with ReplayBuffer(path) as buffer, Executor() as executor:
        buffer.add_tasks(tasks)
        buffer.add_programs(
            NewProgram(t.id, text, float(lp), int(n), name)
            for (t, text), lp, n in zip(programs, logprob, count, strict=True)
        )
        execute_untested(buffer, executor, show_progress=False)


def draw(buffer_path: Path, steps: int, batch_size: int) -> list[list[tuple[str, str]]]:
    """`steps` minibatches of (task id, program) drawn by the default replay (rank-based P2Value)."""
    from pper.buffer import ReplayBuffer
    from pper.buffer.replay import Replay, ReplayConfig

    with ReplayBuffer(buffer_path) as buffer:
        replay = Replay.from_buffer(buffer, ReplayConfig(), seed=0)
        texts = {p.id: (p.task_id, p.text) for p in buffer.programs()}
        return [[texts[d.program_id] for d in replay.sample(batch_size)] for _ in range(steps)]


# -- one part, in its own process ---------------------------------------------------------------------------------


def run_part(part: str, args: argparse.Namespace) -> dict:
    from pper.buffer import ReplayBuffer
    from pper.generation import load_model
    from pper.training.examples import build_example

    batches = json.loads(args.batches.read_text())
    model, tokenizer, _ = load_model("default")
    with ReplayBuffer(args.buffer) as buffer:
        tasks = {t.id: t for t in buffer.tasks()}
    examples = [[build_example(tasks[t], text, tokenizer, args.max_length) for t, text in b] for b in batches]
    library, method = part.split("-")
    run = {"pper": _pper, "trainer": _trainer, "trl": _trl}[library]
    ends, losses, tokens, targets, detail = run(model, tokenizer, examples, method, args)
    seconds = ends[-1] - ends[0]
    return {
        "part": part,
        "label": f"{LABELS[library]} ({method}{', ' + detail if detail else ''})",
        "tokens_per_second": sum(tokens[1:]) / seconds,
        "seconds_per_step": seconds / (len(ends) - 1),
        "losses": losses,
        "tokens": tokens,
        "target_tokens": targets,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _lora_config():
    from peft import LoraConfig

    from pper.training import TrainingConfig

    lora = TrainingConfig().lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def _pper(model, tokenizer, examples, method, args):
    from transformers import get_scheduler

    from pper.training import TrainingConfig
    from pper.training.trainer import PPERTrainer

    micro = {"micro_batch_size": args.micro_batch_size} if args.micro_batch_size else {}
    config = TrainingConfig(
        method=method,
        precision=args.precision,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_length=args.max_length,
        weight_decay=0.0,
        max_grad_norm=1.0,
        **micro,
    )
    trainer = PPERTrainer(model, tokenizer, config)
    trainer.steps = len(examples)
    trainer.scheduler = get_scheduler("linear", trainer.optimizer, 0, len(examples))
    ends, losses, tokens, targets = [], [], [], []
    for batch in examples:
        s = trainer.train_step(batch)
        ends.append(time.perf_counter())
        losses.append(s.loss)
        tokens.append(s.tokens)
        targets.append(sum(len(e.ids) - e.first_predicted for e in batch))
    per_pass = min(config.micro_batch_size, config.batch_size)
    attention = "attention per example" if trainer.segments else "block-diagonal mask"
    return ends, losses, tokens, targets, f"{per_pass}/forward pass, unpadded, {attention}, fused adamw"


class _Recorder:
    """Per optimiser step of a `transformers.Trainer`: the end time, the loss (the micro-batches' losses,
    each already a share of the step's mean), the tokens fed (padding not counted) and the target positions."""

    def __init__(self):
        self.ends, self.losses, self.tokens, self.targets = [], [], [], []
        self._loss, self._tokens, self._targets = 0.0, 0, 0

    def micro_batch(self, inputs, loss) -> None:
        labels = inputs["labels"]
        self._targets += int((labels[:, 1:] != -100).sum())
        mask = inputs.get("attention_mask")
        self._tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        self._loss += float(loss)

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.losses.append(self._loss)
        self.tokens.append(self._tokens)
        self.targets.append(self._targets)
        self._loss, self._tokens, self._targets = 0.0, 0, 0


def _recording(trainer_cls, recorder: _Recorder):
    from transformers import TrainerCallback

    class Recording(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counted = {k: inputs[k] for k in ("labels", "attention_mask", "input_ids") if k in inputs}
            loss = super().training_step(model, inputs, num_items_in_batch)
            recorder.micro_batch(counted, loss)
            return loss

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            recorder.step_end()

    return Recording, StepEnd()


def _hf_args(args, out: str, n_steps: int) -> dict:
    """TrainingArguments shared by the Trainer and TRL parts."""
    accumulation = max(1, args.batch_size // args.hf_batch[0])
    return dict(
        output_dir=out,
        per_device_train_batch_size=args.batch_size // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=n_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=args.precision == "bfloat16",
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )


def _trainer(model, tokenizer, examples, method, args):
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    if method == "lora":
        model = get_peft_model(model, _lora_config())
    rows = [
        {"input_ids": list(e.ids), "labels": [-100] * e.target_start + list(e.ids[e.target_start :])}
        for b in examples
        for e in b
    ]
    recorder = _Recorder()
    cls, callback = _recording(Trainer, recorder)
    with tempfile.TemporaryDirectory() as out:
        trainer = cls(
            model=model,
            args=TrainingArguments(**_hf_args(args, out, len(examples))),
            train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[callback],
        )
        trainer.train()
    r = recorder
    return r.ends, r.losses, r.tokens, r.targets, f"{_layout(args)}, dynamic padding, {_optim(trainer)}"


def _trl(model, tokenizer, examples, method, args):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [
        {"input_ids": list(e.ids), "completion_mask": [0] * e.target_start + [1] * e.target_tokens}
        for b in examples
        for e in b
    ]
    recorder = _Recorder()
    cls, callback = _recording(SFTTrainer, recorder)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            **_hf_args(args, out, len(examples)),
            completion_only_loss=True,
            padding_free=True,
            max_length=None,  # the examples are already cut to --max-length
        )
        trainer = cls(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=_lora_config() if method == "lora" else None,
            callbacks=[callback],
        )
        trainer.train()
    r = recorder
    return r.ends, r.losses, r.tokens, r.targets, f"{_layout(args)}, padding-free, {_optim(trainer)}"


def _optim(trainer) -> str:
    return str(getattr(trainer.args.optim, "value", trainer.args.optim))


def _layout(args) -> str:
    accumulation = max(1, args.batch_size // args.hf_batch[0])
    return f"{args.batch_size // accumulation}/forward pass x {accumulation}"


# -- the bench ----------------------------------------------------------------------------------------------------


def check(results: dict[str, dict], precision: str) -> list[str]:
    """The failed correctness checks (empty when all pass)."""
    failures = []
    for method in ("lora", "full"):
        parts = [r for r in results.values() if r["part"].endswith("-" + method)]
        if len(parts) < 2:
            continue
        ref = parts[0]
        for r in parts[1:]:
            for key in ("tokens", "target_tokens"):
                if r[key] != ref[key]:
                    failures.append(f"{r['label']} trains on other {key} than {ref['label']}: {r[key]} != {ref[key]}")
            first = abs(r["losses"][0] - ref["losses"][0]) / abs(ref["losses"][0])
            if not first <= FIRST_LOSS_RTOL[precision]:
                failures.append(
                    f"{r['label']}: first-step loss {r['losses'][0]:.5f} != {ref['label']}'s {ref['losses'][0]:.5f} "
                    f"(relative difference {first:.1e} > {FIRST_LOSS_RTOL[precision]:.0e})"
                )
            if method == "full":
                worst = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref["losses"], strict=True))
                if not worst <= FULL_LOSS_RTOL[precision]:
                    failures.append(
                        f"{r['label']}: losses {r['losses']} differ from {ref['label']}'s {ref['losses']} by up to "
                        f"{worst:.1e} (relative, > {FULL_LOSS_RTOL[precision]:.0e}): not the same training"
                    )
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--run", type=Path, help="Replay the buffer of this run directory instead.")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--repeat", type=int, default=2, help="Runs of every part (best of them reported).")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--micro-batch-size", type=int, help="pper's programs per forward pass (default: pper's).")
    parser.add_argument(
        "--hf-batch",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[8, 1],
        help="Trainer's and TRL's programs per forward pass: each layout listed is run, the fastest counts.",
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--buffer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args)))
        return
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        sys.exit(f"unknown parts {sorted(unknown)}; choose among {','.join(PARTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            buffer_path = args.run / "buffer.sqlite"
        else:
            buffer_path = Path(tmp) / "buffer.sqlite"
            build_buffer(buffer_path, args.tasks, args.max_length)
        batches = Path(tmp) / "batches.json"
        batches.write_text(json.dumps(draw(buffer_path, args.steps, args.batch_size)))
        source = f"the buffer of {args.run}" if args.run else f"{args.tasks} HumanEval tasks x 3 programs"
        print(
            f"SmolLM2-135M-Instruct, {args.precision}, {args.steps} steps (1 warm-up) of {args.batch_size} programs "
            f"drawn by rank PPER from {source}, max length {args.max_length}"
        )
        # (part, programs per forward pass of Trainer and TRL): each of --hf-batch for those, pper's own for pper
        units = [(part, hb) for part in parts for hb in (args.hf_batch if not part.startswith("pper") else [None])]
        runs: dict[str, list[dict]] = {part: [] for part in parts}
        common = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in _FORWARDED and v is not None]
        common += ["--batches", str(batches), "--buffer", str(buffer_path)]
        for repeat in range(args.repeat):  # the order alternates, so that a drift of the load hits every part alike
            for part, hb in units if repeat % 2 == 0 else units[::-1]:
                cmd = [sys.executable, __file__, "--part", part, *common] + ([f"--hf-batch={hb}"] if hb else [])
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{part} failed:\n{done.stderr[-3000:]}")
                r = json.loads(done.stdout.splitlines()[-1])
                runs[part].append(r)
                print(f"run {repeat + 1}: {_line(r)}", flush=True)
    results = {part: max(rs, key=lambda r: r["tokens_per_second"]) for part, rs in runs.items()}
    print(f"best run per part over {args.repeat} repeats and every layout (peak RSS: the largest of its runs):")
    for part, r in results.items():
        print(_line({**r, "peak_rss_mb": max(x["peak_rss_mb"] for x in runs[part])}))
    n_runs = {part: len(rs) // args.repeat for part, rs in runs.items()}  # runs of a part per repeat
    failures = [
        f
        for i in range(args.repeat)
        for j in range(max(n_runs.values()))
        for f in check(
            {p: rs[i * n_runs[p] + min(j, n_runs[p] - 1)] for p, rs in runs.items()},
            args.precision,
        )
    ]
    print(
        "checks (same tokens and target tokens per step; first-step losses agree; full fine-tuning losses agree): "
        + ("FAILED" if failures else "passed")
    )
    for f in failures:
        print("  FAILED: " + f)
    for method in ("full", "lora"):
        for library in ("trainer", "trl"):
            mine, theirs = results.get(f"pper-{method}"), results.get(f"{library}-{method}")
            if mine and theirs:
                ratio = mine["tokens_per_second"] / theirs["tokens_per_second"]
                print(f"tokens/s vs {LABELS[library]} ({method}): {ratio:.2f}x")
    if failures:
        sys.exit(1)


def _line(r: dict) -> str:
    return (
        f"{r['label']:62s} {r['tokens_per_second']:7.1f} tokens/s, {r['seconds_per_step']:6.2f} s/step, "
        f"peak RSS {r['peak_rss_mb']:5.0f} MB; losses {' '.join(f'{x:.4f}' for x in r['losses'])}"
    )


_FORWARDED = ("precision", "learning_rate", "max_length", "micro_batch_size", "batch_size")

if __name__ == "__main__":
    main()
