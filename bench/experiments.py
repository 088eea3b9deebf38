"""The paper's claims at small scale: BTP against its baselines and the alpha sweep, from a YAML protocol.

    python bench/experiments.py configs/experiments/small.yaml [--only ARM ...] [--report-only]
                                [--publish docs/results.md]

The protocol file (see configs/experiments/) names:
* `common`: a pper configuration shared by every arm (model, tasks, training and evaluation settings);
* `buffers`: how each replay buffer is filled (a `generation` section each: beam search, temperature
  sampling); each is sampled and tested once, then copied into the run of every arm that uses it, so
  those arms replay the very same programs;
* `arms`: per arm, its buffer, its seeds and its overrides of the config (`replay` priority, alpha,
  min_pass_rate, ...); `train: false` marks the base model (evaluated, never trained);
* `alpha_sweep`: the arms that make the alpha plot (each sets `replay.alpha`);
* `extends`: another protocol file (beside this one) that this one adds to; with the same `name`, the two
  share their runs, so a protocol with more seeds reuses the finished ones;
* `compare`: pairs of arms [a, b] whose paired difference a - b is reported (every arm is compared with
  the base model anyway).
Every arm x seed is an ordinary resumable `pper run` under RUNS_DIR/NAME/ARM/seed-S; the driver skips
what is finished, so running it again after an interruption continues. Each unit's working time is
appended to RUNS_DIR/NAME/timings.jsonl, so the wall time adds up over interrupted invocations. At the end
it writes RUNS_DIR/NAME/results.json, results.md (pass rate and strict accuracy per held-out source and
arm, mean over seeds with a 95% bootstrap interval over tasks; then each difference with its paired
interval) and alpha.png (the alpha sweep). `--publish DOC` also puts that table between
`<!-- results: NAME -->` and `<!-- end results: NAME -->` in DOC and the plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pper.buffer import BUFFER_FILE, ReplayBuffer
from pper.config import validate_config
from pper.errors import PperError
from pper.jsonl import append_jsonl, read_jsonl
from pper.pipeline import eval_paths, run

BOOTSTRAP = 10_000
TIMINGS = "timings.jsonl"
NOT_RUN = "not-run.txt"  # in an arm's run directory: why it could not run


@contextmanager
def timed(root: Path, unit: str):
    """Append the seconds spent on `unit` to the protocol's time ledger, also when it is interrupted."""
    start = time.time()
    finished = False
    try:
        yield
        finished = True
    finally:
        seconds = time.time() - start
        if seconds > 1 or not finished:  # a unit found already done costs nothing worth logging
            row = {"unit": unit, "seconds": round(seconds, 1), "finished": finished, "time": start}
            append_jsonl(root / TIMINGS, [row])


def ledger(root: Path) -> list[dict]:
    """The rows of the protocol's time ledger (none before its first unit)."""
    return read_jsonl(root / TIMINGS) if (root / TIMINGS).exists() else []


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_protocol(path: Path) -> dict:
    """A protocol file; `extends: OTHER.yaml` (beside it) starts from that protocol and merges this one in."""
    protocol = yaml.safe_load(path.read_text())
    if "extends" in protocol:
        protocol = deep_merge(load_protocol(path.parent / protocol.pop("extends")), protocol)
    return protocol


def arm_config(protocol: dict, root: Path, name: str, seed: int, overrides: dict) -> Any:
    data = deep_merge(protocol["common"], overrides)
    data.update(name=f"{name}/seed-{seed}", runs_dir=str(root), seed=seed)
    return validate_config(data, f"arm {name}")


def fill_buffer(protocol: dict, root: Path, buffer: str) -> Path:
    """Sample and test the training tasks once for `buffer` (a run without training); its directory."""
    from pper.execution import Executor
    from pper.generation import transformers_sampler
    from pper.pipeline import execute_untested, prepare, sample_into_buffer

    data = deep_merge(protocol["common"], {"generation": protocol["buffers"][buffer]})
    data.update(name=f"buffers/{buffer}", runs_dir=str(root), seed=0)
    config = validate_config(data, f"buffer {buffer}")
    prepared = prepare(config)
    g, x = config.generation, config.execution
    with (
        ReplayBuffer.in_run(prepared.dir) as store,
        Executor(limits=x.limits, workers=x.workers, isolation=x.isolation) as executor,
    ):
        sample_into_buffer(store, transformers_sampler(g, config.seed), prepared.train, g.mode, g.k, round=1)
        execute_untested(store, executor)
    return prepared.dir


def run_arm(protocol: dict, root: Path, name: str, arm: dict, seed: int, buffers: dict[str, Path]) -> Path:
    overrides = {k: v for k, v in arm.items() if k not in ("buffer", "seeds", "train")}
    if not arm.get("train", True):  # the base model: round 0 only
        overrides = deep_merge(overrides, {"evaluation": {"before": True}, "rounds": 1, "training": {"steps": 0}})
    else:
        overrides = deep_merge(overrides, {"evaluation": {"before": False}})
        overrides = deep_merge(overrides, {"generation": protocol["buffers"][arm["buffer"]]})
    config = arm_config(protocol, root, name, seed, overrides)
    run_dir = config.run_dir
    if arm.get("train", True) and not (run_dir / BUFFER_FILE).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        with ReplayBuffer.in_run(buffers[arm["buffer"]]) as source:  # a consistent copy, WAL included
            source._db.execute(f"VACUUM INTO '{run_dir / BUFFER_FILE}'")
    if not arm.get("train", True):
        if eval_paths(run_dir, 0)[1].exists():
            return run_dir
        from pper.evaluation import evaluate
        from pper.execution import Executor
        from pper.generation import transformers_sampler
        from pper.pipeline import prepare

        prepared = prepare(config)
        samples, metrics = eval_paths(run_dir, 0)
        x, e = config.execution, config.evaluation
        with Executor(limits=x.limits, workers=x.workers, isolation=x.isolation) as executor:
            evaluate(prepared.eval, samples, executor, transformers_sampler(config.generation, seed), e.mode, e.n,
                     e.ks, metrics, {"round": 0, "model": config.generation.model})  # fmt: skip
        return run_dir
    if not eval_paths(run_dir, config.rounds)[1].exists():
        run(config)
    return run_dir


def per_task(run_dir: Path, round: int) -> dict[str, tuple[float, float, str]]:
    """task id -> (pass rate, strict, source) of a run's evaluation of `round`."""
    samples, _ = eval_paths(run_dir, round)
    rows = read_jsonl(f"{samples}_results.jsonl")
    return {r["task_id"]: (float(r["pass_rate"]), float(r["passed"]), source_of(r["task_id"])) for r in rows}


METRICS = (("pass_rate", 0), ("strict_accuracy", 1))


def source_of(task_id: str) -> str:
    return task_id.split("/")[0].lower()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bootstrap(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` over tasks resampled with replacement.

    Every call draws the same resamples (a fresh generator with a fixed seed), so an interval depends only
    on its own values: adding an arm or a comparison to a protocol never moves another one's interval.
    """
    idx = np.random.default_rng(0).integers(0, len(values), size=(BOOTSTRAP, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(protocol: dict, root: Path, done: dict[str, list[Path]]) -> dict:
    base_name = next(n for n, a in protocol["arms"].items() if not a.get("train", True))
    base = per_task(done[base_name][0], 0)
    sources = sorted({s for _, _, s in base.values()})
    results: dict[str, Any] = {}
    scores: dict[tuple[str, str, str], np.ndarray] = {}  # (arm, source, metric) -> per-task score
    for name, dirs in done.items():
        round_ = 0 if name == base_name else validate_config(protocol["common"]).rounds
        seeds = [per_task(d, round_) for d in dirs]
        results[name] = {"seeds": len(dirs)}
        for source in sources:
            ids = sorted(t for t, (_, _, s) in base.items() if s == source)
            for metric, col in METRICS:
                score = np.array([[s[t][col] for t in ids] for s in seeds]).mean(axis=0)  # per task, over seeds
                scores[name, source, metric] = score
                results[name][f"{source}/{metric}"] = {
                    "tasks": len(ids),
                    "mean": float(score.mean()),
                    "ci": bootstrap(score),
                    "per_seed": [float(np.mean([s[t][col] for t in ids])) for s in seeds],
                }
    pairs = [(n, base_name) for n in done if n != base_name]
    pairs += [(a, b) for a, b in protocol.get("compare", []) if a in done and b in done]
    differences = []
    for a, b in pairs:
        row: dict[str, Any] = {"arm": a, "against": b}
        for source in sources:
            for metric, _ in METRICS:
                diff = scores[a, source, metric] - scores[b, source, metric]  # paired: the same tasks
                row[f"{source}/{metric}"] = {"mean": float(diff.mean()), "ci": bootstrap(diff)}
        differences.append(row)
    return {"sources": sources, "base": base_name, "arms": results, "differences": differences}


def buffer_stats(protocol: dict, root: Path) -> dict[str, dict]:
    """Per filled buffer: its programs, how good they are, and the minutes it took to fill and test."""
    rows = ledger(root)
    out = {}
    for name in protocol["buffers"]:
        run_dir = root / "buffers" / name
        if not (run_dir / BUFFER_FILE).exists():
            continue
        with ReplayBuffer.in_run(run_dir) as buffer:
            stats, table = buffer.stats(), buffer.replay_table()
        out[name] = {
            "tasks": stats["tasks"],
            "programs": stats["programs"],
            "mean_tokens": float(table.num_tokens.mean()) if len(table.num_tokens) else 0.0,
            "mean_pass_rate": stats["mean_pass_rate"],
            "passing_programs": stats["pass_rate_distribution"]["1"],
            "tasks_solved": stats["tasks_solved"],
            "minutes": sum(r["seconds"] for r in rows if r["unit"] == f"buffer {name}") / 60,
        }
    return out


def replay_stats(protocol: dict, root: Path, done: dict[str, list[Path]]) -> dict[str, dict]:
    """Per trained arm, what its replay draws, as exact expectations under its sampling distribution."""
    from pper.buffer import Replay

    rows = ledger(root)
    out = {}
    for name, dirs in done.items():
        arm = protocol["arms"][name]
        if not arm.get("train", True):
            continue
        config = arm_config(protocol, root, name, 0, {k: v for k, v in arm.items() if k == "replay"})
        with ReplayBuffer.in_run(dirs[0]) as buffer:
            replay = Replay.from_buffer(buffer, config.replay)
        prob, table = replay.probability, replay.table
        finished = {f"{name} {d.name.replace('-', ' ')}" for d in dirs}  # "btp-rank seed 0", ...
        units = [r["seconds"] for r in rows if r["unit"] in finished]
        out[name] = {
            "programs": int((prob > 0).sum()),
            "tasks": len(set(table.task_id[prob > 0])),
            "pass_rate": float(prob @ table.pass_rate),
            "passing": float(prob @ (table.pass_rate == 1.0)),
            "possibility": float(prob @ replay.possibility),
            "minutes_per_seed": sum(units) / 60 / len(dirs),
        }
    return out


def results_table(summary: dict) -> list[str]:
    """The paper's Table 2 shape: an arm per row, pass rate and strict accuracy per held-out source."""
    sources, arms = summary["sources"], summary["arms"]
    tasks = {s: next(iter(arms.values()))[f"{s}/pass_rate"]["tasks"] for s in sources}
    head = " | ".join(f"{s} ({tasks[s]}) pass rate | {s} strict acc." for s in sources)
    lines = [f"| arm | seeds | {head} |", "|---|---|" + "---|---|" * len(sources)]
    for name, r in arms.items():
        cells = [f"{r[f'{s}/{m}']['mean']:.1%} [{r[f'{s}/{m}']['ci'][0]:.1%}, {r[f'{s}/{m}']['ci'][1]:.1%}]"
                 for s in sources for m, _ in METRICS]  # fmt: skip
        lines.append(f"| {name} | {r['seeds']} | " + " | ".join(cells) + " |")
    lines += [f"| {name} | not run: {why} |" for name, why in summary.get("not_run", {}).items()]
    return lines


def pp(fraction: float) -> str:
    """A difference in signed percentage points, one decimal, without a negative zero."""
    return f"{round(fraction * 100, 1) + 0.0:+.1f}"


def seeds_table(summary: dict) -> list[str]:
    """Each seed's mean, for the arms with more than one seed: how much the seed alone moves an arm."""
    sources, arms = summary["sources"], summary["arms"]
    lines = ["| arm | " + " | ".join(f"{s} pass rate | {s} strict acc." for s in sources) + " |",
             "|---|" + "---|---|" * len(sources)]  # fmt: skip
    for name, r in arms.items():
        if r["seeds"] > 1:
            cells = [", ".join(f"{v:.1%}" for v in r[f"{s}/{m}"]["per_seed"]) for s in sources for m, _ in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def differences_table(summary: dict) -> list[str]:
    """Each compared pair's mean difference with its paired 95% interval; *noise* where it contains 0."""
    sources = summary["sources"]
    head = " | ".join(f"{s} pass rate | {s} strict acc." for s in sources)
    lines = [f"| difference | {head} |", "|---|" + "---|---|" * len(sources)]
    for row in summary["differences"]:
        cells = []
        for s in sources:
            for m, _ in METRICS:
                d = row[f"{s}/{m}"]
                lo, hi = d["ci"]
                verdict = "noise" if lo <= 0 <= hi else ("**up**" if lo > 0 else "**down**")
                cells.append(f"{pp(d['mean'])} [{pp(lo)}, {pp(hi)}] {verdict}")
        lines.append(f"| {row['arm']} - {row['against']} | " + " | ".join(cells) + " |")
    return lines


def context_tables(summary: dict) -> list[str]:
    """The buffers and what each arm replays from them."""
    lines = ["| buffer | tasks | programs | tokens/program | mean pass rate | programs passing all | tasks solved |"
             " fill + test (min) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, b in summary["buffers"].items():
        lines.append(f"| {name} | {b['tasks']} | {b['programs']} | {b['mean_tokens']:.0f} | "
                     f"{b['mean_pass_rate']:.3f} | {b['passing_programs']} | {b['tasks_solved']} | "
                     f"{b['minutes']:.1f} |")  # fmt: skip
    lines += ["", "| arm | programs it can draw | tasks | E[pass rate] | P(passes all) | E[possibility] |"
              " min per seed |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in summary["replay"].items():
        lines.append(f"| {name} | {r['programs']} | {r['tasks']} | {r['pass_rate']:.3f} | {r['passing']:.3f} | "
                     f"{r['possibility']:.3f} | {r['minutes_per_seed']:.1f} |")  # fmt: skip
    return lines


def write_results(protocol: dict, root: Path, summary: dict) -> str:
    """results.json, results.md and alpha.png under `root`; the markdown."""
    (root / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    sources, arms = summary["sources"], summary["arms"]
    hours = summary["working_seconds"] / 3600
    seeds = seeds_table(summary)
    lines = [
        "Mean over tasks (each task's score averaged over the seeds) with a 95% bootstrap interval over tasks:",
        "",
        *results_table(summary),
        "",
        *(["Each seed's mean, for the arms with several seeds:", "", *seeds, ""] if seeds else []),
        "Differences in percentage points, with a paired 95% bootstrap interval over tasks; *noise* where the",
        "interval contains 0:",
        "",
        *differences_table(summary),
        "",
        "The buffers, and what each arm's replay draws from its buffer (expectations under the arm's sampling",
        "distribution over the buffer; minutes of training and evaluation per seed):",
        "",
        *context_tables(summary),
        "",
        f"Protocol `{summary['protocol']}`; working time {hours:.1f} h (summed from `{TIMINGS}`) on "
        f"{summary['machine']}.",
    ]
    text = "\n".join(lines) + "\n"
    (root / "results.md").write_text(text)
    sweep = [(protocol["arms"][n]["replay"]["alpha"], n) for n in protocol.get("alpha_sweep", []) if n in arms]
    if sweep:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(sources), figsize=(4.5 * len(sources), 3.5), squeeze=False)
        for ax, s in zip(axes[0], sources, strict=True):
            pts = sorted(sweep)
            for m, style in (("pass_rate", "o-"), ("strict_accuracy", "s--")):
                ys = [arms[n][f"{s}/{m}"]["mean"] for _, n in pts]
                lo = [arms[n][f"{s}/{m}"]["ci"][0] for _, n in pts]
                hi = [arms[n][f"{s}/{m}"]["ci"][1] for _, n in pts]
                xs = [a for a, _ in pts]
                ax.plot(xs, ys, style, label=m.replace("_", " "))
                ax.fill_between(xs, lo, hi, alpha=0.15)
            base = arms[summary["base"]][f"{s}/pass_rate"]["mean"]
            ax.axhline(base, color="grey", lw=0.8, ls=":", label="base pass rate")
            ax.set_title(s)
            ax.set_xlabel("alpha (rank-based priority)")
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.tight_layout()
        fig.savefig(root / "alpha.png", dpi=120)
    return text


def publish(doc: Path, name: str, root: Path, text: str) -> None:
    """Put `text` (and the alpha plot, if any) between the `name` markers of `doc`, or at its end."""
    begin, end = f"<!-- results: {name} -->", f"<!-- end results: {name} -->"
    if (root / "alpha.png").exists():
        plot = doc.parent / f"{name}-alpha.png"
        shutil.copyfile(root / "alpha.png", plot)
        text += f"\n![alpha sweep, protocol {name}]({plot.name})\n"
    block = f"{begin}\n{text}{end}"
    old = doc.read_text() if doc.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + block + "\n"
    doc.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", type=Path)
    parser.add_argument("--only", nargs="*", help="Run only these arms (the base model is always run).")
    parser.add_argument("--report-only", action="store_true", help="Only summarise the finished arms.")
    parser.add_argument("--publish", type=Path, metavar="DOC", help="Also put the table and plot into DOC.")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` still logs the interrupted unit's time
    protocol = load_protocol(args.protocol)
    root = Path(protocol.get("runs_dir", "runs/experiments")) / protocol["name"]
    root.mkdir(parents=True, exist_ok=True)
    arms = protocol["arms"]
    rounds = validate_config(protocol["common"]).rounds
    chosen = [n for n in arms if not args.only or n in args.only or not arms[n].get("train", True)]
    # every arm's first seed, then every arm's second, ...: an interrupted protocol has all arms first
    units = [(i, name, seed) for name in chosen for i, seed in enumerate(arms[name].get("seeds", [0]))]
    buffers: dict[str, Path] = {}
    done: dict[str, list[Path]] = {name: [] for name in chosen}
    skipped: dict[str, str] = {}
    for _, name, seed in sorted(units, key=lambda u: u[0]):
        arm = arms[name]
        if arm.get("train", True) and arm["buffer"] not in buffers and not args.report_only:
            with timed(root, f"buffer {arm['buffer']}"):
                buffers[arm["buffer"]] = fill_buffer(protocol, root, arm["buffer"])
        run_dir = root / name / f"seed-{seed}"
        if not args.report_only:
            print(f"== {name} seed {seed}", flush=True)
            try:
                with timed(root, f"{name} seed {seed}"):
                    run_dir = run_arm(protocol, root, name, arm, seed, buffers)
            except PperError as e:  # e.g. a pass-rate filter that leaves nothing to replay
                print(f"   {name} seed {seed} not run: {e}", flush=True)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / NOT_RUN).write_text(str(e))
        if (run_dir / NOT_RUN).exists():
            skipped[name] = (run_dir / NOT_RUN).read_text()
        elif eval_paths(run_dir, 0 if not arm.get("train", True) else rounds)[1].exists():
            done[name].append(run_dir)
    done = {name: dirs for name, dirs in done.items() if dirs}
    summary = summarize(protocol, root, done)
    seconds = sum(r["seconds"] for r in ledger(root))
    summary.update(not_run=skipped, protocol=str(args.protocol), working_seconds=seconds)
    summary.update(buffers=buffer_stats(protocol, root), replay=replay_stats(protocol, root, done))
    import torch

    threads = torch.get_num_threads()
    summary["machine"] = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads)"
    text = write_results(protocol, root, summary)
    if args.publish:
        publish(args.publish, protocol["name"], root, text)
    print(text)


if __name__ == "__main__":
    main()
