"""Training throughput: pper's PPER step against a plain transformers `Trainer`, same replayed programs.

The replayed programs: a buffer of HumanEval programs (each task's canonical solution and a wrong
variant, tested in pper's sandbox, P(t) from a forward pass of the default model), or the buffer of a
run (--run DIR). `--steps` minibatches of `--batch-size` programs are drawn once by rank-based PPER and
fed, in the same order, to every part:

* "plain Trainer" (the baseline): `transformers.Trainer` with default settings (full fine-tuning, AdamW,
  float32), the minibatch padded by `DataCollatorForSeq2Seq` with the prompt labels at -100; only its
  sampler is made sequential so that it sees the same minibatches.
* pper: `PPERTrainer.train_step` (one unpadded program per forward pass, logits only at program
  positions), full and LoRA r=16, with the `auto` precision (bfloat16 autocast only where the hardware
  computes bfloat16; float32 on a CPU without AVX-512 BF16 / AMX).

Each part runs in its own process (its peak RSS is its own); the first step is a warm-up and is not
timed. Tokens are the prompt and program tokens of the minibatch (padding not counted). The losses of
the first step must agree across parts, which checks that pper's loss is the usual one.

    python bench/training.py [--steps 6] [--batch-size 8] [--tasks 48] [--run RUN_DIR] [--micro-batch-size 1]
        [--parts trainer,pper-full-auto,pper-lora-auto,pper-full-bfloat16,...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("trainer", "pper-full-auto", "pper-lora-auto")  # also: pper-{full,lora}-{float32,bfloat16}


def build_buffer(path: Path, n_tasks: int) -> None:
    """HumanEval canonical solutions and wrong variants, tested, with their logP under the default model."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from humaneval_samples import samples
    from pper.buffer import Execution, NewProgram, ReplayBuffer
    from pper.execution import Executor, program_of
    from pper.generation import load_model
    from pper.tasks import load_tasks
    from pper.training.examples import build_example

    tasks = load_tasks("humaneval", limit=n_tasks)
    by_id = {t.id: t for t in tasks}
    model, tokenizer, name = load_model("default")
    rows = samples(tasks)
    programs = []
    for row in rows:
        task = by_id[row["task_id"]]
        program = program_of(task, row["completion"])
        ex = build_example(task, program, tokenizer, 1024)
        ids = torch.tensor([ex.ids])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        token_logp = logp[torch.arange(ex.target_start - 1, len(ex.ids) - 1), ids[0, ex.target_start :]]
        programs.append(NewProgram(task.id, program, float(token_logp.sum()), ex.target_tokens, name))
    with ReplayBuffer(path) as buffer, Executor() as executor:
        buffer.add_tasks(tasks)
        ids = buffer.add_programs(programs)
        results = executor.map((by_id[p.task_id], p.text) for p in programs)
        buffer.add_executions(
            Execution(i, r.verdicts, r.passed, r.error, r.time) for i, r in zip(ids, results, strict=True)
        )


def draw(buffer_path: Path, steps: int, batch_size: int) -> list[list[tuple[str, str]]]:
    from pper.buffer import ReplayBuffer
    from pper.buffer.replay import Replay, ReplayConfig

    with ReplayBuffer(buffer_path) as buffer:
        replay = Replay.from_buffer(buffer, ReplayConfig(), seed=0)
        texts = {p.id: (p.task_id, p.text) for p in buffer.programs()}
        return [[texts[d.program_id] for d in replay.sample(batch_size)] for _ in range(steps)]


def run_part(part: str, batches_file: Path, buffer_path: Path, micro_batch: int = 1) -> dict:
    from pper.buffer import ReplayBuffer
    from pper.generation import load_model
    from pper.training import TrainingConfig
    from pper.training.examples import build_example

    batches = json.loads(batches_file.read_text())
    model, tokenizer, _ = load_model("default")
    with ReplayBuffer(buffer_path) as buffer:
        tasks = {t.id: t for t in buffer.tasks()}
    examples = [[build_example(tasks[t], text, tokenizer, 1024) for t, text in b] for b in batches]
    tokens = [sum(len(e.ids) for e in b) for b in examples]
    if part == "trainer":
        label = "plain Trainer (full, float32)"
        seconds, losses = _plain_trainer(model, tokenizer, examples)
    else:
        from pper.training.trainer import PPERTrainer

        _, method, precision = part.split("-")
        config = TrainingConfig(method=method, precision=precision, learning_rate=5e-5, micro_batch_size=micro_batch)
        trainer = PPERTrainer(model, tokenizer, config)
        trainer.steps = len(examples)
        from transformers import get_scheduler

        trainer.scheduler = get_scheduler("linear", trainer.optimizer, 0, len(examples))
        seconds, losses = [], []
        dtype = str(trainer.dtype or "torch.float32").split(".")[-1]
        label = f"pper {method}, {precision} ({dtype}), {micro_batch}/pass"
        for b in examples:
            s = trainer.train_step(b)
            seconds.append(s.seconds)
            losses.append(s.loss)
    return {
        "label": label,
        "tokens_per_second": sum(tokens[1:]) / sum(seconds[1:]),
        "seconds_per_step": sum(seconds[1:]) / len(seconds[1:]),
        "losses": losses,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _plain_trainer(model, tokenizer, examples) -> tuple[list[float], list[float]]:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    rows = [
        {"input_ids": list(e.ids), "labels": [-100] * e.target_start + list(e.ids[e.target_start :])}
        for b in examples
        for e in b
    ]

    class Sequential(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    class Clock(TrainerCallback):
        def __init__(self):
            self.seconds, self.losses, self.start = [], [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            per_device_train_batch_size=len(examples[0]),
            max_steps=len(examples),
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = Sequential(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[clock],
        )
        trainer.train()
    return clock.seconds, clock.losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=48)
    parser.add_argument("--run", type=Path, help="Replay the buffer of this run directory instead.")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--micro-batch-size", type=int, default=1, help="pper's programs per forward pass.")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--buffer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(run_part(args.part, args.batches, args.buffer, args.micro_batch_size)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            buffer_path = args.run / "buffer.sqlite"
        else:
            buffer_path = Path(tmp) / "buffer.sqlite"
            build_buffer(buffer_path, args.tasks)
        batches = Path(tmp) / "batches.json"
        batches.write_text(json.dumps(draw(buffer_path, args.steps, args.batch_size)))
        print(
            f"SmolLM2-135M-Instruct, {args.steps} steps (1 warm-up) of {args.batch_size} programs drawn by rank PPER "
            f"from {'the buffer of ' + str(args.run) if args.run else f'{args.tasks} HumanEval tasks x 2 programs'}"
        )
        results = {}
        for part in args.parts.split(","):
            cmd = [sys.executable, __file__, "--part", part, "--batches", str(batches), "--buffer", str(buffer_path),
                   "--micro-batch-size", str(args.micro_batch_size)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{part} failed:\n{done.stderr[-3000:]}")
            r = results[part] = json.loads(done.stdout.splitlines()[-1])
            ratio = r["tokens_per_second"] / results["trainer"]["tokens_per_second"] if "trainer" in results else None
            print(
                f"{r['label']:34s}: {r['tokens_per_second']:7.1f} tokens/s, {r['seconds_per_step']:6.2f} s/step, "
                f"peak RSS {r['peak_rss_mb']:6.0f} MB"
                + (f", {ratio:.2f}x the plain Trainer" if ratio else "")
                + f"; first-step loss {r['losses'][0]:.4f}, losses {' '.join(f'{x:.3f}' for x in r['losses'])}"
            )


if __name__ == "__main__":
    main()
