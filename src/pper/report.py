"""The run report: `report.md` with the kept model (which round, why, its validation and held-out figures
against round 0's), the metrics per round, the time per phase and the buffer, and the plots under `plots/`
(pass rate per round, the buffer's pass-rate and P2Value distributions, the loss)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .buffer import ReplayBuffer
from .buffer.priority import p2value, possibility
from .files import write_atomic
from .jsonl import read_jsonl

PHASES = ("sampling", "testing", "repair", "prm", "training", "validation", "evaluation")


def round_metrics(run_dir: Path, validation: bool = False) -> list[dict[str, Any]]:
    """The metrics JSON of each evaluated round on the held-out tasks (or the validation tasks), in round
    order."""
    rows = []
    for path in (Path(run_dir) / "eval" / ("validation" if validation else "")).glob("round-*.json"):
        rows.append(json.loads(path.read_text()))
    return sorted(rows, key=lambda r: r["round"])


def kept_summary(kept: dict[str, Any] | None, held_out: dict[int, dict[str, Any]]) -> list[str]:
    """The report's paragraph on the kept model: its round, its validation pass rate against round 0's
    with the paired 95% interval, and the held-out test figures of both."""
    if kept is None:
        return ["No kept model yet: the run has not finished its last round."]
    r, v = kept["round"], kept.get("validation")
    if v is None:
        lines = [
            f"**Kept round {r}**, the last round. The run has no validation tasks (`tasks.validation: 0`), so the "
            "kept model was not checked against the base model."
        ]
    elif r == 0:
        later = ", ".join(f"round {k} {p:.4f}" for k, p in v["pass_rates"].items() if k != "0")
        lines = [
            f"**No round beat the base model** on the {v['tasks']} validation tasks, so the run ships the base "
            f"model (round 0) unchanged. Validation pass rate: round 0 {v['round_0_pass_rate']:.4f}; {later}."
        ]
    else:
        low, high = v["interval"]
        lines = [
            f"**Kept round {r}**: validation pass rate {v['pass_rate']:.4f} against {v['round_0_pass_rate']:.4f} "
            f"for round 0 (the base model) on {v['tasks']} validation tasks, a difference of {v['difference']:+.4f} "
            f"with paired 95% bootstrap interval [{low:+.4f}, {high:+.4f}]"
            + (" (it includes 0: the gain may be noise)." if low <= 0 <= high else ".")
        ]
    lines.append("")
    for round_ in sorted({0, r}):
        what = "the base model" + (", kept" if r == 0 else "") if round_ == 0 else "the kept model"
        m = held_out.get(round_)
        if m is None:
            why = " (`evaluation.before: false`)" if round_ == 0 else ""
            lines.append(f"- Held-out test, round {round_} ({what}): not evaluated{why}.")
        else:
            o = m["overall"]
            lines.append(
                f"- Held-out test, round {round_} ({what}): pass rate {o['pass_rate']:.4f}, "
                f"strict accuracy {o['strict_accuracy']:.4f} on {o['tasks']} tasks."
            )
    lines += ["", f"The kept model is `model/` (from {kept.get('from', '?')}); `pper eval --model RUN_DIR` loads it."]
    return lines


def phase_seconds(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Seconds per round and phase: finished attempts as logged, a killed attempt up to its last event."""
    seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    open_phase: dict[str, Any] | None = None
    last = None
    for e in events:
        if e.get("event") == "start":
            open_phase = e
        elif e.get("event") == "end" and open_phase is not None:
            seconds[e["round"]][e["phase"]] += e["seconds"]
            open_phase = None
        elif e.get("event") == "run" and open_phase is not None and last is not None:
            seconds[open_phase["round"]][open_phase["phase"]] += last["time"] - open_phase["time"]
            open_phase = None
        last = e
    return {r: dict(p) for r, p in sorted(seconds.items())}


def training_losses(events: list[dict[str, Any]]) -> dict[int, list[tuple[int, float]]]:
    """(step, loss) per round; a step logged again after a resume counts once (the later one)."""
    losses: dict[int, dict[int, float]] = defaultdict(dict)
    for e in events:
        if e.get("event") == "step":
            losses[e["round"]][e["step"]] = e["loss"]
    return {r: sorted(steps.items()) for r, steps in sorted(losses.items())}


def metrics_table(metrics: list[dict[str, Any]]) -> list[str]:
    """The held-out metrics per round as a markdown table: round, tasks, pass rate, strict accuracy, pass@k."""
    ks = sorted({k for m in metrics for k in m["overall"] if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    lines = [
        "| round | tasks | pass rate | strict accuracy |" + "".join(f" {k} |" for k in ks),
        "|---|---|---|---|" + "---|" * len(ks),
    ]
    for m in metrics:
        o = m["overall"]
        cells = [str(m["round"]), str(o["tasks"]), f"{o['pass_rate']:.4f}", f"{o['strict_accuracy']:.4f}"]
        cells += [f"{o[k]:.4f}" if k in o else "" for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    if not metrics:
        lines.append("| (no round evaluated yet) | | | |")
    return lines


def write_report(run_dir: str | Path, config: Any) -> Path:
    """Write `report.md` and `plots/*.png` from what the run directory holds now; returns the report path."""
    run_dir = Path(run_dir)
    from .pipeline import read_kept

    metrics = round_metrics(run_dir)
    validation = round_metrics(run_dir, validation=True)
    events = read_jsonl(run_dir / "events.jsonl")
    times = phase_seconds(events)
    losses = training_losses(events)
    with ReplayBuffer.in_run(run_dir) as buffer:
        stats = buffer.stats()
        table = buffer.replay_table()
    values = p2value(
        possibility(table.logprob, table.num_tokens, config.replay.possibility), table.pass_rate, config.replay.alpha
    )
    plots = _plots(run_dir, metrics, table.pass_rate, values, config.replay.alpha, losses)

    lines = [
        f"# pper run `{config.name}`",
        "",
        f"Model `{config.generation.model}`; training tasks `{config.tasks.source}`; {config.rounds} round(s) of "
        f"{config.generation.mode} sampling (k={config.generation.k}), "
        f"{config.training.steps} {config.training.method} steps of {config.training.batch_size} programs "
        f"replayed by {config.replay.priority} priority "
        f"(alpha={config.replay.alpha}, exponent={config.replay.exponent}).",
        "",
        "## Kept model",
        "",
        *kept_summary(read_kept(run_dir), {m["round"]: m for m in metrics}),
        "",
        "## Held-out metrics per round",
        "",
        "Round 0 is the model before fine-tuning. Pass rate: mean fraction of tests passed; strict accuracy: "
        "all tests pass.",
        "",
        *metrics_table(metrics),
    ]
    lines += _multiturn_lines(metrics)
    if validation:
        lines += [
            "",
            "## Validation metrics per round",
            "",
            "The validation tasks are training-source tasks never sampled or trained on; they choose the kept round.",
            "",
            "| round | tasks | pass rate | strict accuracy |",
            "|---|---|---|---|",
        ]
        for m in validation:
            o = m["overall"]
            lines.append(f"| {m['round']} | {o['tasks']} | {o['pass_rate']:.4f} | {o['strict_accuracy']:.4f} |")
    lines += [
        "",
        "## Wall time per phase (seconds)",
        "",
        "| round | " + " | ".join(PHASES) + " |",
        "|---|" + "---|" * len(PHASES),
    ]
    for r, phases in times.items():
        lines.append(f"| {r} | " + " | ".join(f"{phases[p]:.0f}" if p in phases else "" for p in PHASES) + " |")
    total = sum(sum(phases.values()) for phases in times.values())
    lines += ["", f"{total:.0f} s in all phases (loading the model and writing the kept one not counted)."]
    rate = stats["mean_pass_rate"]
    lines += [
        "",
        "## Replay buffer",
        "",
        f"{stats['programs']} programs for {stats['tasks_with_programs']} tasks, {stats['tested']} tested"
        + (
            f", mean pass rate {rate:.4f}, {stats['tasks_solved']} tasks solved by at least one program."
            if rate is not None
            else "."
        ),
        "",
        "| pass rate | " + " | ".join(stats["pass_rate_distribution"]) + " |",
        "|---|" + "---|" * len(stats["pass_rate_distribution"]),
        "| programs | " + " | ".join(str(v) for v in stats["pass_rate_distribution"].values()) + " |",
        "",
    ]
    lines += _density_lines(stats)
    lines += _turn_lines(stats, events)
    lines += [f"![{name}](plots/{name}.png)" for name in plots]
    report = run_dir / "report.md"
    write_atomic(report, "\n".join(lines) + "\n")
    return report


def _density_lines(stats: dict[str, Any]) -> list[str]:
    """The buffer's density per round (tasks with a passing program, share of programs passing a test) and,
    with a curriculum, how many tasks sat at each stage."""
    density, stages = stats["density_by_round"], stats["stages_by_round"]
    if not density:
        return []
    all_stages = sorted({int(k) for counts in stages.values() for k in counts})
    head = "| round | tasks | tasks with a passing program | programs | share passing a test |"
    head += "".join(f" stage {k} |" for k in all_stages)
    lines = ["Buffer density per round (programs sampled in that round):", "", head,
             "|---|---|---|---|---|" + "---|" * len(all_stages)]  # fmt: skip
    for r, d in density.items():
        share = d["share_passing_a_test"]
        row = f"| {r} | {d['tasks']} | {d['tasks_with_passing_program']} | {d['programs']} | "
        row += f"{share:.3f} |" if share is not None else "- |"
        row += "".join(f" {stages.get(r, {}).get(str(k), 0)} |" for k in all_stages)
        lines.append(row)
    return [*lines, ""]


def turn_tasks_line(result: dict[str, Any]) -> str:
    """What the per-turn scores of a multi-turn evaluation's `result` count (`multiturn.turn_tasks`)."""
    info = result.get("turn_tasks") or {}
    left_out = info.get("private_all_public", [])
    line = f"Per-turn scores over the {info.get('judged', result['overall']['tasks'])} tasks with hidden tests"
    if left_out:
        line += f"; left out: {len(left_out)} whose private tests are all public (the feedback may quote them)"
    return line + "."


def _multiturn_lines(metrics: list[dict[str, Any]]) -> list[str]:
    """With a multi-turn evaluation (`evaluation.turns` > 1): each round's held-out scores after each turn of
    repair, and pass@t of t independent samples where measured."""
    rows = [m for m in metrics if len(m.get("turns", [])) > 1]
    if not rows:
        return []
    lines = ["", "Held-out scores after each repair turn (private tests; independent: pass@t of t samples).",
             turn_tasks_line(rows[-1]), ""]  # fmt: skip
    lines += [
        "| round | turn | tasks repaired | pass rate | strict accuracy | independent pass@t |",
        "|---|---|---|---|---|---|",
    ]
    for m in rows:
        independent = m.get("independent") or {}
        for t in m["turns"]:
            at = independent.get(f"pass@{t['turn']}")
            lines.append(
                f"| {m['round']} | {t['turn']} | {t['repaired']} | {t['pass_rate']:.4f} | {t['strict_accuracy']:.4f} | "
                + (f"{at:.4f} |" if at is not None else "- |")
            )
    return lines


def _turn_lines(stats: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """With repair turns (RLEF): the programs written at each turn of each round and how many pass every test, and
    how many of the programs replayed in training came from repair turns."""
    turns = stats["turns_by_round"]
    if not any(int(t) > 1 for counts in turns.values() for t in counts):
        return []
    steps: dict[int, dict[int, int]] = defaultdict(dict)  # a step logged again after a resume counts once
    for e in events:
        if e.get("event") == "step":
            steps[e["round"]][e["step"]] = e.get("repaired", 0)
    repaired = {r: (len(by_step), sum(by_step.values())) for r, by_step in steps.items()}
    lines = ["Programs per repair turn (turn 1: first attempts; later turns answer feedback on the public tests):", ""]
    lines += ["| round | turn | programs | passing every test |", "|---|---|---|---|"]
    for r, counts in turns.items():
        for t, c in counts.items():
            lines.append(f"| {r} | {t} | {c['programs']} | {c['passing']} |")
    total = sum(c["programs"] for counts in turns.values() for c in counts.values())
    lines += ["", f"{total} programs generated in all."]
    for r, (n_steps, from_repair) in sorted(repaired.items()):
        lines.append(f"Round {r}: {from_repair} programs replayed in its {n_steps} steps came from repair turns.")
    return [*lines, ""]


def _plots(
    run_dir: Path,
    metrics: list[dict[str, Any]],
    pass_rates: np.ndarray,
    values: np.ndarray,
    alpha: float,
    losses: dict[int, list[tuple[int, float]]],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    made = []
    if metrics:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        rounds = [m["round"] for m in metrics]
        ax.plot(rounds, [m["overall"]["pass_rate"] for m in metrics], "o-", label="pass rate")
        ax.plot(rounds, [m["overall"]["strict_accuracy"] for m in metrics], "s--", label="strict accuracy")
        ax.set_xlabel("round (0 = before fine-tuning)")
        ax.set_ylabel("held-out score")
        ax.set_xticks(rounds)
        ax.legend()
        ax.grid(alpha=0.3)
        made.append(_save(fig, out, "pass_rate"))
    if pass_rates.size:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
        a.hist(pass_rates, bins=np.linspace(0, 1, 11), edgecolor="black")
        a.set_xlabel("pass rate")
        a.set_ylabel("programs")
        b.hist(values, bins=20, edgecolor="black")
        b.set_xlabel(f"P2Value (alpha = {alpha})")
        fig.suptitle("replay buffer")
        made.append(_save(fig, out, "buffer"))
    last = metrics[-1] if metrics else {}
    if len(last.get("turns", [])) > 1:
        made.append(plot_turns(last, out, "turns"))
    if losses:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        offset = 0
        for r, steps in losses.items():
            ax.plot([offset + s for s, _ in steps], [v for _, v in steps], label=f"round {r}")
            offset += steps[-1][0] if steps else 0
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss (program tokens)")
        ax.legend()
        ax.grid(alpha=0.3)
        made.append(_save(fig, out, "loss"))
    plt.close("all")
    return made


def plot_turns(result: dict[str, Any], out: Path, name: str = "turns", title: str = "") -> str:
    """`out/name.png`: a multi-turn evaluation's pass rate and strict accuracy after each turn of repair
    (`evaluation.multiturn`), and, where measured, pass@t of t independent samples (the same budget of programs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = result["turns"]
    x = [t["turn"] for t in turns]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, [t["pass_rate"] for t in turns], "o-", label="repair turns: pass rate")
    ax.plot(x, [t["strict_accuracy"] for t in turns], "s-", label="repair turns: strict accuracy")
    independent = result.get("independent")
    if independent:
        ax.plot(x, [independent.get(f"pass@{t}") for t in x], "^--", label="independent samples: pass@t")
    ax.set_xlabel("turns (programs per task)")
    ax.set_ylabel("held-out score (private tests)")
    ax.set_xticks(x)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.mkdir(parents=True, exist_ok=True)
    name = _save(fig, out, name)
    plt.close(fig)
    return name


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    return name
