"""The results of a protocol: statistics over held-out tasks, markdown tables, the alpha plot, publishing.

Per arm and held-out source, for pass rate and strict accuracy:
* pooled: each task's score averaged over the arm's seeds, then the mean over tasks with a 95% bootstrap
  interval over tasks;
* per seed: each seed's mean over tasks with its own interval;
* differences, for each compared pair a - b (every arm against the base model, then `compare`): the
  paired interval over tasks of the scores pooled over the paired seeds, and per seed (a's seed s against b's
  seed s, finished in both, or against b's only seed when b plans one, like the deterministic base model).
Every interval draws the same resamples (`pper.evaluation.stats`), so adding an arm never moves another's.
The intervals are over held-out tasks for these trained models: a pooled one does not include the spread between
training seeds (the per-seed rows show it), so a gain is read as the method's only when the seeds agree.
Buffers are read with `ReplayBuffer.reading`: a report never migrates a buffer that an older pper may be running.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..buffer import BUFFER_FILE, ReplayBuffer
from ..errors import PperError
from ..evaluation.multiturn import turn_path
from ..evaluation.stats import bootstrap_mean, paired_bootstrap
from ..files import write_atomic
from ..jsonl import read_jsonl
from ..pipeline import eval_paths
from .arms import Unit, buffer_dir, buffer_filled, prm_stats
from .protocol import Protocol
from .runner import TIMINGS, UNRECORDED, ledger, machines, not_run, spent

METRICS = (("pass_rate", 0), ("strict_accuracy", 1))
Scores = dict[str, tuple[float, float]]  # task id -> (pass rate, strict), averaged over the task's samples


def source_of(task_id: str) -> str:
    """The held-out source a task id belongs to: its part before "/" (mbpp/1, HumanEval/0), lower-cased; "tasks"
    for an id without one (a JSONL task's free-form id)."""
    return task_id.split("/")[0].lower() if "/" in task_id else "tasks"


def per_task(run_dir: Path, round: int) -> Scores:
    """task id -> (pass rate, passed all tests) of a run's held-out evaluation of `round`, each averaged over
    the task's samples. With a multi-turn evaluation (`evaluation.turns` = T > 1), the scores after turn T of the
    tasks the per-turn metrics count (`multiturn.turn_tasks`) are there too, under `SOURCE-turnT/TASK` (a held-out
    "source" of their own in the tables)."""
    samples, metrics = eval_paths(run_dir, round)
    scores = _scores(samples)
    data = json.loads(metrics.read_text()) if metrics.exists() else {}
    turns = data.get("turns", [])
    if len(turns) > 1:
        last = turns[-1]["turn"]
        left_out = set(data.get("turn_tasks", {}).get("private_all_public", []))
        after = _scores(turn_path(samples, last))
        scores.update({f"{source_of(t)}-turn{last}/{t}": v for t, v in after.items() if t not in left_out})
    return scores


def _scores(samples: Path) -> Scores:
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in read_jsonl(f"{samples}_results.jsonl"):
        rows[r["task_id"]].append((float(r["pass_rate"]), float(r["passed"])))
    return {t: (float(np.mean([p for p, _ in v])), float(np.mean([s for _, s in v]))) for t, v in rows.items()}


def wall_clock_runs(units: Sequence[Unit]) -> dict[str, list[dict[str, Any]]]:
    """Arm -> per seed, the steps an arm with a wall-clock budget (grpo) ran, its seconds and its budget."""
    out: dict[str, list[dict[str, Any]]] = {}
    for u in units:
        record = u.run_dir / "checkpoints" / "round-1" / "rl.json"
        if u.kind.wall_clock and record.exists():
            out.setdefault(u.arm, []).append({"seed": u.seed, **json.loads(record.read_text())})
    return out


def turn_curves(units: Sequence[Unit]) -> dict[str, dict[str, list[float]]]:
    """Arm -> its held-out pass rate and strict accuracy after each turn (mean over seeds), and the base model's
    independent samples' pass@t where measured: the per-turn plot's data."""
    curves: dict[str, dict[str, list[list[float]]]] = {}
    for u in units:
        _, metrics = eval_paths(u.run_dir, u.result_round)
        data = json.loads(metrics.read_text()) if metrics.exists() else {}
        turns = data.get("turns", [])
        if len(turns) < 2:
            continue
        arm = curves.setdefault(u.arm, {"pass_rate": [], "strict_accuracy": [], "independent": []})
        arm["pass_rate"].append([t["pass_rate"] for t in turns])
        arm["strict_accuracy"].append([t["strict_accuracy"] for t in turns])
        if data.get("independent"):
            arm["independent"].append([data["independent"][f"pass@{t['turn']}"] for t in turns])
    return {arm: {k: list(np.mean(v, axis=0)) for k, v in c.items() if v} for arm, c in curves.items()}


def turns_plot(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Held-out strict accuracy against turns per arm, with pass@t of independent samples where measured. Each
    arm's markers and line are smaller than the arm's before, so arms with the same scores stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (arm, c) in enumerate(curves.items()):
        x = list(range(1, len(c["strict_accuracy"]) + 1))
        size, width = max(10 - 2 * i, 3), max(3 - 0.5 * i, 1)
        (line,) = ax.plot(x, c["strict_accuracy"], "o-", ms=size, lw=width, label=f"{arm}: repair turns")
        if "independent" in c:
            ax.plot(x, c["independent"], "^--", ms=size, lw=width, color=line.get_color(),
                    label=f"{arm}: independent pass@t")  # fmt: skip
    ax.set_xticks(range(1, 1 + max((len(c["strict_accuracy"]) for c in curves.values()), default=1)))
    ax.set_xlabel("turns = programs per task")
    ax.set_ylabel("held-out strict accuracy (private tests)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _interval(values: np.ndarray) -> dict[str, Any]:
    mean, low, high = bootstrap_mean(values)
    return {"mean": mean, "ci": [low, high]}


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    mean, low, high = paired_bootstrap(a, b)
    return {"mean": mean, "ci": [low, high]}


def summarize(protocol: Protocol, units: Sequence[Unit]) -> dict[str, Any]:
    """The statistics of every finished unit among `units` (see the module docstring), and why the others
    did not run."""
    base = protocol.base_arm()
    rows = ledger(protocol.root)
    done: dict[str, list[Unit]] = {}
    skipped: dict[str, str] = {}
    for u in units:
        if u.done():
            done.setdefault(u.arm, []).append(u)
        elif (why := not_run(u)) is not None:
            skipped.setdefault(u.arm, why)
    if base not in done:
        raise PperError(
            f"protocol {protocol.name}: the base model's evaluation ({base}) is not done: nothing to compare"
        )
    tables = {arm: {u.seed: per_task(u.run_dir, u.result_round) for u in us} for arm, us in done.items()}
    reference = next(iter(tables[base].values()))
    sources = sorted({source_of(t) for t in reference})
    ids = {s: sorted(t for t in reference if source_of(t) == s) for s in sources}
    for arm, seeds in tables.items():
        for seed, table in seeds.items():
            missing = [t for t in reference if t not in table]
            if missing:
                raise PperError(
                    f"{arm} seed {seed} has no held-out result for {len(missing)} of the base model's tasks "
                    f"(e.g. {missing[0]}): the arms were evaluated on different tasks"
                )

    def column(table: Scores, source: str, col: int) -> np.ndarray:
        return np.array([table[t][col] for t in ids[source]])

    arms: dict[str, Any] = {}
    pooled: dict[tuple[str, str, str], np.ndarray] = {}
    for arm, seeds in tables.items():
        arms[arm] = {"kind": protocol.arms[arm].kind, "seeds": list(seeds), "planned": len(protocol.arms[arm].seeds)}
        for s in sources:
            for metric, col in METRICS:
                per_seed = {seed: column(table, s, col) for seed, table in seeds.items()}
                score = np.mean(list(per_seed.values()), axis=0)
                pooled[arm, s, metric] = score
                arms[arm][f"{s}/{metric}"] = {
                    "tasks": len(score),
                    **_interval(score),
                    "per_seed": [{"seed": seed, **_interval(v)} for seed, v in per_seed.items()],
                }
    differences = []
    for a, b in protocol.comparisons():
        if a not in tables or b not in tables:
            continue
        pairs = _seed_pairs(list(tables[a]), list(tables[b]), protocol.arms[b].seeds)
        if not pairs:  # seeds planned alike, none finished in both yet
            continue
        row: dict[str, Any] = {"arm": a, "against": b, "seeds": [list(p) for p in pairs]}
        mine, theirs = sorted({sa for sa, _ in pairs}), sorted({sb for _, sb in pairs})
        for s in sources:
            for metric, col in METRICS:
                over_a = np.mean([column(tables[a][x], s, col) for x in mine], axis=0)  # the paired seeds only
                over_b = np.mean([column(tables[b][x], s, col) for x in theirs], axis=0)
                row[f"{s}/{metric}"] = {
                    **_paired(over_a, over_b),
                    "per_seed": [
                        {
                            "seed": sa,
                            "against_seed": sb,
                            **_paired(column(tables[a][sa], s, col), column(tables[b][sb], s, col)),
                        }
                        for sa, sb in pairs
                    ],  # fmt: skip
                }
        differences.append(row)
    return {
        "protocol": protocol.source,
        "name": protocol.name,
        "sources": sources,
        "base": base,
        "arms": arms,
        "differences": differences,
        "not_run": {a: why for a, why in skipped.items() if a not in done},
        "working_seconds": sum(spent(rows).values()),
        "buffers": buffer_stats(protocol),
        "prm": prm_stats(protocol, spent(rows).get("prm", 0.0)),
        "replay": replay_stats(protocol, done),
        "density": density_stats(done),
        "machines": {m: round(t, 1) for m, t in machines(rows).items()},
        "turns": turn_curves([u for us in done.values() for u in us]),
        "wall_clock": wall_clock_runs([u for us in done.values() for u in us]),
    }


def _seed_pairs(a: list[int], b: list[int], planned_b: list[int]) -> list[tuple[int, int]]:
    """The finished seeds of a (`a`) paired with b's (`b`): with b's only seed when b has one planned (the base
    model, an arm of one seed); else the same seed, finished in both (an arm with 1 of its 3 seeds done is not
    paired with the other arm's seeds 1 and 2)."""
    if len(planned_b) == 1:
        return [(s, b[0]) for s in a if b]
    return [(s, s) for s in a if s in b]


def buffer_stats(protocol: Protocol) -> dict[str, dict]:
    """Per filled shared buffer: its programs, how good they are, and the minutes it took to fill and test."""
    seconds = spent(ledger(protocol.root))
    names = dict.fromkeys([*protocol.buffers, "references"])
    out = {}
    for name in names:
        if not buffer_filled(protocol, name):
            continue
        with ReplayBuffer.reading(buffer_dir(protocol, name) / BUFFER_FILE) as buffer:
            stats, table = buffer.stats(), buffer.replay_table()
        out[name] = {
            "tasks": stats["tasks"],
            "programs": stats["programs"],
            "mean_tokens": float(table.num_tokens.mean()) if len(table.num_tokens) else 0.0,
            "mean_pass_rate": stats["mean_pass_rate"],
            "passing_programs": stats["pass_rate_distribution"]["1"],
            "tasks_solved": stats["tasks_solved"],
            "minutes": seconds.get(f"buffer {name}", 0.0) / 60,
        }
    return out


def replay_stats(protocol: Protocol, done: dict[str, list[Unit]]) -> dict[str, dict]:
    """Per trained arm, what its replay draws from its (first seed's, final) buffer, as exact expectations
    under its sampling distribution, and its minutes per finished seed."""
    from ..buffer import Replay

    seconds = spent(ledger(protocol.root))
    out = {}
    for arm, us in done.items():
        if not us[0].kind.trains or not (us[0].run_dir / BUFFER_FILE).exists():
            continue
        with ReplayBuffer.reading(us[0].run_dir / BUFFER_FILE) as buffer:
            try:
                replay = Replay.from_buffer(buffer, us[0].config.replay)
            except PperError:  # nothing to replay now (a kind whose buffer is not its replay)
                continue
        prob, table = replay.probability, replay.table
        out[arm] = {
            "programs": int((prob > 0).sum()),
            "tasks": len(set(table.task_id[prob > 0])),
            "pass_rate": float(prob @ table.pass_rate),
            "passing": float(prob @ (table.pass_rate == 1.0)),
            "possibility": float(prob @ replay.possibility),
            "minutes_per_seed": sum(seconds.get(u.label, 0.0) for u in us) / 60 / len(us),
        }
    return out


def density_stats(done: dict[str, list[Unit]]) -> dict[str, dict[str, dict]]:
    """Per trained arm that sampled programs itself (more than one round in its buffer, or no shared buffer to
    start from) and per seed: its buffer's density per round (`ReplayBuffer.density`), with a curriculum how many
    tasks sat at each stage (`ReplayBuffer.stage_counts`), and the shared buffer its round 1 is (None: none)."""
    out: dict[str, dict[str, dict]] = {}
    for arm, us in done.items():
        for u in us:
            if not u.kind.trains or not (u.run_dir / BUFFER_FILE).exists():
                continue
            with ReplayBuffer.reading(u.run_dir / BUFFER_FILE) as buffer:
                stats = buffer.stats()
            density, shared = stats["density_by_round"], u.kind.buffer(u.spec)
            if len(density) > 1 or shared is None:
                out.setdefault(arm, {})[str(u.seed)] = {"density": density, "stages": stats["stages_by_round"],
                                                        "shared": shared}  # fmt: skip
    return out


def density_table(summary: dict) -> list[str]:
    """The programs each arm sampled, round by round: tasks with a program passing every test, the share of
    programs passing at least one, and the tasks at each curriculum stage."""
    rows = summary.get("density", {})
    if not rows:
        return []
    lines = ["The programs each arm sampled, round by round (buffer density; stage: tasks at that curriculum "
             "stage; a round marked *shared* holds the shared buffer the arm starts from, not its own programs):",
             "", "| arm | seed | round | tasks with a passing program | programs | share passing a test |"
             " tasks per stage |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, seeds in rows.items():
        for seed, d in seeds.items():
            for r, x in d["density"].items():
                share = "-" if x["share_passing_a_test"] is None else f"{x['share_passing_a_test']:.3f}"
                counts = d["stages"].get(r, {})
                stages = ", ".join(f"{k}: {counts[k]}" for k in sorted(counts, key=int)) if counts else "-"
                round_ = f"{r} (*shared*: {d['shared']})" if d.get("shared") and r == "1" else r
                lines.append(f"| {arm} | {seed} | {round_} | {x['tasks_with_passing_program']} of {x['tasks']} | "
                             f"{x['programs']} | {share} | {stages} |")  # fmt: skip
    return [*lines, ""]


# -- markdown ----------------------------------------------------------------------------------


def where(seconds: dict[str, float]) -> str:
    """The machines the ledger's units ran on (`machines`), with their hours when there are several."""
    named = {("a machine the ledger did not record" if m == UNRECORDED else m): t for m, t in seconds.items()}
    if len(named) == 1:
        return next(iter(named))
    return "; ".join(f"{m} ({t / 3600:.1f} h)" for m, t in named.items()) or "no recorded machine"


def pct(x: float) -> str:
    return f"{x:.1%}"


def pp(fraction: float) -> str:
    """A difference in signed percentage points, one decimal, without a negative zero."""
    return f"{round(fraction * 100, 1) + 0.0:+.1f}"


def _cell(d: dict[str, Any]) -> str:
    return f"{pct(d['mean'])} [{pct(d['ci'][0])}, {pct(d['ci'][1])}]"


ZERO = 1e-9  # a bound this close to 0 is 0: a mean of fractions carries floating-point error of ~1e-18


def _diff_cell(d: dict[str, Any]) -> str:
    lo, hi = d["ci"]
    verdict = "noise" if lo <= ZERO and hi >= -ZERO else ("**up**" if lo > 0 else "**down**")
    return f"{pp(d['mean'])} [{pp(lo)}, {pp(hi)}] {verdict}"


def _head(summary: dict, first: str) -> list[str]:
    sources = summary["sources"]
    cols = " | ".join(f"{s} pass rate | {s} strict acc." for s in sources)
    return [f"| {first} | {cols} |", "|---" * first.count("|") + "|---|" + "---|---|" * len(sources)]


def results_table(summary: dict) -> list[str]:
    """The paper's Table 2 shape: an arm per row, pass rate and strict accuracy per held-out source."""
    sources, arms = summary["sources"], summary["arms"]
    tasks = {s: arms[summary["base"]][f"{s}/pass_rate"]["tasks"] for s in sources}
    head = " | ".join(f"{s} ({tasks[s]}) pass rate | {s} strict acc." for s in sources)
    lines = [f"| arm | seeds | {head} |", "|---|---|" + "---|---|" * len(sources)]
    for name, r in arms.items():
        cells = [_cell(r[f"{s}/{m}"]) for s in sources for m, _ in METRICS]
        lines.append(f"| {name} | {_seed_count(r)} | " + " | ".join(cells) + " |")
    lines += [f"| {name} | not run: {why} |" for name, why in summary.get("not_run", {}).items()]
    return lines


def _seed_count(arm: dict) -> str:
    """How many seeds an arm's figures pool: "3", or "1 of 3" while seeds are still to run (or could not)."""
    planned = arm.get("planned", len(arm["seeds"]))
    return str(len(arm["seeds"])) if len(arm["seeds"]) >= planned else f"{len(arm['seeds'])} of {planned}"


def seeds_table(summary: dict) -> list[str]:
    """Each seed's mean with its own interval, for the arms with more than one seed."""
    sources, arms = summary["sources"], summary["arms"]
    lines = _head(summary, "arm | seed")
    for name, r in arms.items():
        if len(r["seeds"]) > 1:
            for i, seed in enumerate(r["seeds"]):
                cells = [_cell(r[f"{s}/{m}"]["per_seed"][i]) for s in sources for m, _ in METRICS]
                lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def differences_table(summary: dict) -> list[str]:
    """Each compared pair's mean difference with its paired 95% interval; *noise* where it contains 0."""
    lines = _head(summary, "difference")
    for row in summary["differences"]:
        cells = [_diff_cell(row[f"{s}/{m}"]) for s in summary["sources"] for m, _ in METRICS]
        lines.append(f"| {row['arm']} - {row['against']} | " + " | ".join(cells) + " |")
    return lines


def seed_differences_table(summary: dict) -> list[str]:
    """Each compared pair's difference seed by seed, for pairs whose first arm has more than one seed."""
    sources = summary["sources"]
    lines = _head(summary, "difference | seeds")
    for row in summary["differences"]:
        first = row[f"{sources[0]}/pass_rate"]["per_seed"]
        if len(first) < 2:
            continue
        for i, p in enumerate(first):
            cells = [_diff_cell(row[f"{s}/{m}"]["per_seed"][i]) for s in sources for m, _ in METRICS]
            lines.append(f"| {row['arm']} - {row['against']} | {p['seed']} - {p['against_seed']} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return lines if len(lines) > 2 else []


def context_tables(summary: dict) -> list[str]:
    """The shared buffers, and what each arm replays."""
    lines = ["| buffer | tasks | programs | tokens/program | mean pass rate | programs passing all | tasks solved |"
             " fill + test (min) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, b in summary["buffers"].items():
        rate = "-" if b["mean_pass_rate"] is None else f"{b['mean_pass_rate']:.3f}"
        lines.append(f"| {name} | {b['tasks']} | {b['programs']} | {b['mean_tokens']:.0f} | {rate} | "
                     f"{b['passing_programs']} | {b['tasks_solved']} | {b['minutes']:.1f} |")  # fmt: skip
    lines += ["", "| arm | programs it can draw | tasks | E[pass rate] | P(passes all) | E[possibility] |"
              " min per seed |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in summary["replay"].items():
        lines.append(f"| {name} | {r['programs']} | {r['tasks']} | {r['pass_rate']:.3f} | {r['passing']:.3f} | "
                     f"{r['possibility']:.3f} | {r['minutes_per_seed']:.1f} |")  # fmt: skip
    return lines


def prm_lines(prm: dict[str, Any] | None) -> list[str]:
    """The protocol's PRM: its cost and its quality on the validation tasks' lines."""
    if prm is None:
        return []
    val = prm["balance"]["validation"]
    share = "-" if prm["good_share"] is None else pct(prm["good_share"])

    def aucs(values: dict[str, float | None]) -> str:
        v = {k: "-" if x is None else f"{x:.3f}" for k, x in values.items()}
        return f"PRM {v['prm']}, the policy's line log-probability {v['logprob']}, the line's position {v['position']}"

    buffers = " + ".join(prm["buffers"]) + (" buffers" if len(prm["buffers"]) > 1 else " buffer")
    by_model = prm.get("auc_by_model", {})
    per_source = (
        " By the programs' source (- where a source's lines are all of one class): "
        + "; ".join(f"{m}, {d['lines']} lines ({d['good']} good): {aucs(d['auc'])}" for m, d in by_model.items())
        + "."
        if len(by_model) > 1
        else ""
    )
    return [
        f"The PRM: {prm['programs']} programs of the {buffers} labelled "
        f"({'/'.join(prm['completer'])} completer) with {prm['probes']} probes ({prm['contradicted']} programs with a "
        f"contradicted probe); {prm['lines']} lines, {share} labelled good; labelling and training took "
        f"{prm['seconds'] / 60:.1f} min. ROC AUC on {val['lines']} lines of the validation tasks ({val['good']} good): "
        f"{aucs(prm['auc'])}.{per_source}",
        "",
    ]


def markdown(summary: dict) -> str:
    seeds, seed_diffs = seeds_table(summary), seed_differences_table(summary)
    hours = summary["working_seconds"] / 3600
    lines = [
        "Mean over tasks (each task's score averaged over the seeds) with a 95% bootstrap interval over tasks:",
        "",
        *results_table(summary),
        "",
        *(
            ["Each seed's mean with its own interval, for the arms with several seeds:", "", *seeds, ""]
            if seeds
            else []
        ),
        "Differences in percentage points, with a paired 95% bootstrap interval over tasks; *noise* where the",
        "interval contains 0:",
        "",
        *differences_table(summary),
        "",
        *(["The same differences seed by seed:", "", *seed_diffs, ""] if seed_diffs else []),
        "The buffers, and what each arm's replay draws from its buffer (expectations under the arm's sampling",
        "distribution over the buffer; minutes of training and evaluation per seed):",
        "",
        *context_tables(summary),
        "",
        *density_table(summary),
        *prm_lines(summary.get("prm")),
        *[
            f"{arm} (at the wall-clock of its budget arm): "
            + "; ".join(
                f"seed {r['seed']} ran {r['steps']} steps in {r['seconds']:.0f} s of {r['max_seconds']:.0f} s"
                for r in runs
            )  # fmt: skip
            + ".\n"
            for arm, runs in summary.get("wall_clock", {}).items()
        ],
        f"Protocol `{summary['protocol']}`; working time {hours:.1f} h (summed from `{TIMINGS}`) on "
        f"{where(summary['machines'])}.",
    ]
    return "\n".join(lines) + "\n"


def write_results(protocol: Protocol, summary: dict) -> str:
    """results.json, results.md and (with an alpha sweep) alpha.png under the protocol's root; the markdown."""
    root = protocol.root
    write_atomic(root / "results.json", json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    write_atomic(root / "results.md", text)
    sweep = sorted(
        (protocol.arms[n].overrides["replay"]["alpha"], n) for n in protocol.alpha_sweep if n in summary["arms"]
    )
    if sweep:
        alpha_plot(summary, sweep, root / "alpha.png")
    if summary.get("turns"):
        turns_plot(summary["turns"], root / "turns.png")
    return text


def alpha_plot(summary: dict, sweep: list[tuple[float, str]], path: Path) -> None:
    """Pass rate and strict accuracy against alpha, with their intervals, per held-out source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources, arms = summary["sources"], summary["arms"]
    fig, axes = plt.subplots(1, len(sources), figsize=(4.5 * len(sources), 3.5), squeeze=False)
    xs = [a for a, _ in sweep]
    for ax, s in zip(axes[0], sources, strict=True):
        for m, style in (("pass_rate", "o-"), ("strict_accuracy", "s--")):
            cells = [arms[n][f"{s}/{m}"] for _, n in sweep]
            ax.plot(xs, [c["mean"] for c in cells], style, label=m.replace("_", " "))
            ax.fill_between(xs, [c["ci"][0] for c in cells], [c["ci"][1] for c in cells], alpha=0.15)
        base = arms[summary["base"]][f"{s}/pass_rate"]["mean"]
        ax.axhline(base, color="grey", lw=0.8, ls=":", label="base pass rate")
        ax.set_title(s)
        ax.set_xlabel("alpha (rank-based priority)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def publish(doc: Path, protocol: Protocol, text: str) -> None:
    """Put `text` (and the alpha and per-turn plots, if any) between the `<!-- results: NAME -->` and
    `<!-- end results: NAME -->` markers of `doc`, or at its end; the rest of `doc` is left as it is."""
    name, root = protocol.name, protocol.root
    begin, end = f"<!-- results: {name} -->", f"<!-- end results: {name} -->"
    for figure, caption in (("alpha", "alpha sweep"), ("turns", "held-out scores per turn")):
        if (root / f"{figure}.png").exists():
            plot = doc.parent / f"{name}-{figure}.png"
            shutil.copyfile(root / f"{figure}.png", plot)
            text += f"\n![{caption}, protocol {name}]({plot.name})\n"
    block = f"{begin}\n{text}{end}"
    old = doc.read_text() if doc.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + block + "\n"
    write_atomic(doc, new)
