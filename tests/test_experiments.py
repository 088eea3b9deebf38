"""pper.experiments: protocol files, the equal-budget rule, summary statistics, publishing, the references-sft
buffer, and `pper experiment run` end to end on a tiny protocol."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pper.buffer import Group, Member, NewProgram, ReplayBuffer
from pper.errors import PperError
from pper.evaluation.multiturn import turn_path
from pper.experiments import load_protocol, units, validate_protocol
from pper.experiments.report import (
    density_stats,
    density_table,
    differences_table,
    publish,
    seed_differences_table,
    seeds_table,
    summarize,
    write_results,
)
from pper.pipeline import CONFIG_FILE, eval_paths
from pper.tasks import load_tasks

ROOT = Path(__file__).parents[1]
PROTOCOLS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda p: p.name)
def test_every_protocol_file_gives_valid_arm_configs(path):
    protocol = load_protocol(path)  # validates every arm x seed config and the equal budgets
    for unit in units(protocol):
        assert unit.config.seed == unit.seed
        assert unit.config.run_dir == protocol.root / unit.arm / f"seed-{unit.seed}"
        assert unit.config.tasks.validation == 0  # arms ship their last round
    assert protocol.arm_config(protocol.base_arm(), 0).training.steps == 0


def test_small_compares_btp_with_references_sft_pass_filter_and_the_base_model():
    protocol = load_protocol(ROOT / "configs/experiments/small.yaml")
    comparisons = protocol.comparisons()
    for other in ("references-sft", "pass-filter", "base"):
        assert ("btp-rank", other) in comparisons
    sft = protocol.arm_config("references-sft", 0)
    assert sft.replay.priority == "uniform" and sft.replay.min_pass_rate is None
    assert protocol.arm_config("pass-filter", 0).replay.min_pass_rate == 1.0
    btp = protocol.arm_config("btp-rank", 0)
    assert (sft.rounds, sft.training.steps, sft.training.batch_size) == (
        btp.rounds,
        btp.training.steps,
        btp.training.batch_size,
    )


def test_extends_adds_seeds_and_arms_to_the_shared_protocol():
    small = load_protocol(ROOT / "configs/experiments/small.yaml")
    more = load_protocol(ROOT / "configs/experiments/small-extended.yaml")
    assert more.name == small.name and more.common == small.common and more.root == small.root
    assert more.arm_config("btp-rank", 0) == small.arm_config("btp-rank", 0)  # the same runs
    assert more.arms["btp-rank"].seeds == [0, 1, 2] and small.arms["btp-rank"].seeds == [0]
    assert set(small.arms) < set(more.arms)


def protocol_dict(tmp_path: Path, **arms) -> dict:
    return {
        "name": "t",
        "runs_dir": str(tmp_path),
        "common": {"tasks": {"source": "humaneval", "limit": 4}},
        "buffers": {"b": {"mode": "beam", "k": 2}},
        "arms": {"base": {"kind": "base"}, **arms},
    }


def test_arms_compared_with_different_budgets_are_refused(tmp_path):
    data = protocol_dict(tmp_path, a={"buffer": "b"}, sft={"kind": "references-sft", "training": {"steps": 32}})
    validate_protocol(data)  # not compared with each other: allowed
    with pytest.raises(PperError, match=r"arms a and sft .*a: rounds 1, training.steps 16.*sft: .*training.steps 32"):
        validate_protocol({**data, "compare": [["a", "sft"]]})
    data = protocol_dict(tmp_path, a={"buffer": "b", "replay": {"alpha": 0.0}}, c={"buffer": "b", "rounds": 2})
    data["arms"]["c"]["replay"] = {"alpha": 1.0}
    with pytest.raises(PperError, match=r"arms a and c .*rounds 1.*rounds 2"):
        validate_protocol({**data, "alpha_sweep": ["a", "c"]})


def test_protocol_mistakes_are_named(tmp_path):
    for arms, message in [
        ({"a": {"kind": "nope"}}, "unknown arm kind 'nope'"),
        ({"a": {"buffer": "nope"}}, "unknown buffer 'nope'"),
        ({"a": {"buffer": "b", "repaly": {}}}, "unknown key 'repaly'"),
        ({"a": {"kind": "references-sft", "replay": {"priority": "rank"}}}, "replay.priority: 'rank'"),
        ({"a": {"kind": "references-sft", "buffer": "b"}}, "needs a buffer of source references"),
        ({"a": {"buffer": "b", "tasks": {"validation": 0.25}}}, "arms ship their last round"),
    ]:
        with pytest.raises(PperError, match=message):
            validate_protocol(protocol_dict(tmp_path, **arms))


def fake_run(
    protocol, arm: str, seed: int, scores: dict[str, tuple[float, bool]], after: dict | None = None, left_out=()
) -> None:
    """A unit's run directory holding only its held-out evaluation's per-program results (what the summary reads);
    with `after`, a 2-turn evaluation whose scores after turn 2 are `after`, its per-turn metrics leaving out the
    tasks `left_out` (private tests all public)."""
    unit = next(u for u in units(protocol) if u.arm == arm and u.seed == seed)
    samples, metrics = eval_paths(unit.run_dir, unit.result_round)
    samples.parent.mkdir(parents=True)
    metrics.parent.mkdir(parents=True)
    for path, table in ((samples, scores), (turn_path(samples, 2), after or {})):
        rows = [{"task_id": t, "pass_rate": p, "passed": s} for t, (p, s) in table.items()]
        Path(f"{path}_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    turns = [{"turn": t, "pass_rate": 0.5, "strict_accuracy": 0.25 * t} for t in (1, 2)] if after else []
    turn_tasks = {"judged": len(scores) - len(left_out), "private_all_public": sorted(left_out)}
    data = {"turns": turns, "independent": {"pass@1": 0.2, "pass@2": 0.3}, "turn_tasks": turn_tasks}
    metrics.write_text(json.dumps(data if after else {}))


def test_a_multi_turn_evaluation_adds_the_scores_after_the_last_turn_as_a_source(tmp_path):
    tasks = [f"MBPP/{i}" for i in range(10)]
    first, repaired = {t: (0.5, False) for t in tasks}, {t: (1.0, True) for t in tasks}
    quoted = tasks[:2]  # their private tests are all public: not scored after the repair turn
    repaired.update({t: (0.0, False) for t in quoted})
    protocol = validate_protocol(protocol_dict(tmp_path, fix={"buffer": "b"}))
    fake_run(protocol, "base", 0, first, after=first, left_out=quoted)
    fake_run(protocol, "fix", 0, first, after=repaired, left_out=quoted)
    summary = summarize(protocol, units(protocol))
    assert summary["sources"] == ["mbpp", "mbpp-turn2"]
    diffs = {(d["arm"], d["against"]): d for d in summary["differences"]}
    assert diffs["fix", "base"]["mbpp/pass_rate"]["mean"] == 0.0  # turn 1: the same programs
    assert diffs["fix", "base"]["mbpp-turn2/pass_rate"]["mean"] == pytest.approx(0.5)  # the 8 with hidden tests
    assert summary["turns"]["fix"]["strict_accuracy"] == [0.25, 0.5]
    assert summary["turns"]["base"]["independent"] == [0.2, 0.3]
    write_results(protocol, summary)
    assert (protocol.root / "turns.png").exists()


def test_summary_pools_seeds_per_task_gives_per_seed_intervals_and_pairs_differences(tmp_path):
    tasks = [f"MBPP/{i}" for i in range(20)]
    base = {t: (0.5, False) for t in tasks}
    good = [{t: (1.0, True) for t in tasks}, {t: (0.5, i % 2 == 0) for i, t in enumerate(tasks)}]
    data = protocol_dict(tmp_path, good={"buffer": "b", "seeds": [0, 1]}, same={"buffer": "b"})
    protocol = validate_protocol({**data, "compare": [["good", "same"]]})
    fake_run(protocol, "base", 0, base)
    fake_run(protocol, "good", 0, good[0])
    fake_run(protocol, "good", 1, good[1])
    fake_run(protocol, "same", 0, base)
    summary = summarize(protocol, units(protocol))
    good_pr = summary["arms"]["good"]["mbpp/pass_rate"]
    assert good_pr["mean"] == pytest.approx(0.75)
    assert good_pr["ci"] == [pytest.approx(0.75), pytest.approx(0.75)]  # every task scored alike
    per_seed = [(s["seed"], s["mean"], s["ci"]) for s in good_pr["per_seed"]]
    assert per_seed == [(0, 1.0, [1.0, 1.0]), (1, 0.5, [0.5, 0.5])]
    strict = summary["arms"]["good"]["mbpp/strict_accuracy"]
    assert strict["mean"] == pytest.approx(0.75) and strict["ci"][0] < 0.75 < strict["ci"][1]
    seed1 = strict["per_seed"][1]
    assert seed1["mean"] == pytest.approx(0.5) and seed1["ci"][0] < 0.5 < seed1["ci"][1]
    diffs = {(d["arm"], d["against"]): d for d in summary["differences"]}
    assert diffs["same", "base"]["mbpp/pass_rate"]["ci"] == [0.0, 0.0]
    assert diffs["good", "same"]["mbpp/pass_rate"]["mean"] == pytest.approx(0.25)
    per_seed = diffs["good", "base"]["mbpp/pass_rate"]["per_seed"]  # each seed against the base's only seed
    assert [(p["seed"], p["against_seed"], p["mean"]) for p in per_seed] == [(0, 0, 0.5), (1, 0, 0.0)]
    table = "\n".join(differences_table(summary))
    assert "| same - base | +0.0 [+0.0, +0.0] noise" in table
    assert "| good - base | +25.0 [+25.0, +25.0] **up**" in table
    assert "| good - base | 1 - 0 | +0.0 [+0.0, +0.0] noise" in "\n".join(seed_differences_table(summary))
    assert "| good | 0 | 100.0% [100.0%, 100.0%]" in "\n".join(seeds_table(summary))


def test_an_arm_with_seeds_still_to_run_is_paired_seed_by_seed_and_says_so(tmp_path):
    tasks = [f"MBPP/{i}" for i in range(10)]
    data = protocol_dict(tmp_path, a={"buffer": "b", "seeds": [0, 1, 2]}, b={"buffer": "b", "seeds": [0, 1, 2]})
    protocol = validate_protocol({**data, "compare": [["a", "b"]]})
    fake_run(protocol, "base", 0, {t: (0.0, False) for t in tasks})
    for seed, score in enumerate((1.0, 0.5, 0.0)):
        fake_run(protocol, "a", seed, {t: (score, False) for t in tasks})
    fake_run(protocol, "b", 0, {t: (0.25, False) for t in tasks})  # b's seeds 1 and 2 not finished yet
    summary = summarize(protocol, units(protocol))
    diff = next(d for d in summary["differences"] if (d["arm"], d["against"]) == ("a", "b"))
    assert diff["seeds"] == [[0, 0]]  # a's seeds 1 and 2 are not compared with b's seed 0
    assert diff["mbpp/pass_rate"]["mean"] == pytest.approx(0.75)  # over the paired seed only: 1.0 - 0.25
    base = next(d for d in summary["differences"] if (d["arm"], d["against"]) == ("a", "base"))
    assert len(base["seeds"]) == 3 and base["mbpp/pass_rate"]["mean"] == pytest.approx(0.5)  # the base: one seed
    text = write_results(protocol, summary)
    assert "| b | 1 of 3 |" in text and "| a | 3 |" in text


def test_a_unit_whose_run_was_made_by_another_configuration_is_not_done(tmp_path):
    from pper.experiments.runner import run_protocol

    tasks = [f"MBPP/{i}" for i in range(10)]
    protocol = validate_protocol(protocol_dict(tmp_path, a={"buffer": "b"}, c={"buffer": "b"}))
    fake_run(protocol, "base", 0, {t: (0.0, False) for t in tasks})
    fake_run(protocol, "a", 0, {t: (1.0, True) for t in tasks})
    fake_run(protocol, "c", 0, {t: (0.5, True) for t in tasks})
    unit = next(u for u in units(protocol) if u.arm == "a")
    (unit.run_dir / CONFIG_FILE).write_text(unit.config.to_yaml())  # made with the unit's configuration: done
    assert unit.done()
    old = unit.config.model_copy(update={"training": unit.config.training.model_copy(update={"steps": 99})})
    (unit.run_dir / CONFIG_FILE).write_text(old.to_yaml())  # the protocol changed under the run since
    assert not next(u for u in units(protocol) if u.arm == "a").done()
    summary = summarize(protocol, units(protocol))
    assert "a" not in summary["arms"] and "c" in summary["arms"]
    # --only limits what runs, never what the results (and a published block) hold
    text = run_protocol(protocol, only=["c"], report_only=True, echo=lambda _: None)
    assert "| c |" in text and "| base |" in text


def test_a_task_id_without_a_source_prefix_is_one_source():
    from pper.experiments.report import source_of

    assert source_of("HumanEval/3") == "humaneval" and source_of("mbpp/12") == "mbpp"
    assert source_of("task-0") == source_of("task-1") == "tasks"


def test_an_interval_does_not_depend_on_the_other_arms(tmp_path):
    tasks = [f"MBPP/{i}" for i in range(30)]
    base = {t: (0.0, False) for t in tasks}
    mixed = {t: ((i * 7 % 30) / 29, i % 3 == 0) for i, t in enumerate(tasks)}  # many distinct means
    alone = validate_protocol(protocol_dict(tmp_path / "a", mixed={"buffer": "b"}))
    fake_run(alone, "base", 0, base)
    fake_run(alone, "mixed", 0, mixed)
    beside = validate_protocol(protocol_dict(tmp_path / "b", other={"buffer": "b"}, mixed={"buffer": "b"}))
    fake_run(beside, "base", 0, base)
    fake_run(beside, "other", 0, {t: (1 - p, not s) for t, (p, s) in mixed.items()})
    fake_run(beside, "mixed", 0, mixed)
    one, two = summarize(alone, units(alone)), summarize(beside, units(beside))
    ci = one["arms"]["mixed"]["mbpp/pass_rate"]["ci"]
    assert ci[0] < 0.5 < ci[1]
    assert two["arms"]["mixed"]["mbpp/pass_rate"]["ci"] == ci
    assert two["differences"][1]["arm"] == "mixed"
    assert two["differences"][1]["mbpp/pass_rate"] == one["differences"][0]["mbpp/pass_rate"]


def test_publish_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nWritten by hand.\n")
    small = validate_protocol({**protocol_dict(tmp_path), "name": "small"})
    other = validate_protocol({**protocol_dict(tmp_path), "name": "other"})
    publish(doc, small, "table one\n")
    publish(doc, other, "table two\n")
    publish(doc, small, "table three\n")
    text = doc.read_text()
    assert text.startswith("# Results\n\nWritten by hand.\n")
    assert "table one" not in text and text.count("table three") == 1 and text.count("table two") == 1
    assert text.index("table three") < text.index("table two")  # replaced in place


def test_references_buffer_holds_exactly_the_training_tasks_references_tested(tmp_path):
    from pper.buffer import ReplayBuffer
    from pper.experiments.arms import REFERENCES_MODEL, buffer_dir, fill_buffer
    from pper.pipeline import split_tasks

    data = protocol_dict(tmp_path, sft={"kind": "references-sft"})
    data["common"]["tasks"]["holdout"] = 0.5
    data["common"]["execution"] = {"workers": 1}
    protocol = validate_protocol(data)
    train, _, held_out = split_tasks(protocol.buffer_config("references"))
    assert len(train) == 2 and len(held_out) == 2
    fill_buffer(protocol, "references")
    with ReplayBuffer.in_run(buffer_dir(protocol, "references")) as buffer:
        programs = buffer.programs()
        task_ids = {t.id for t in buffer.tasks()}
    assert sorted((p.task_id, p.text) for p in programs) == sorted((t.id, s) for t in train for s in t.solutions)
    assert task_ids == {t.id for t in train}  # nothing of a held-out task
    assert all(p.tested and p.pass_rate == 1.0 for p in programs)  # HumanEval's references pass their tests
    assert all(p.model == REFERENCES_MODEL and p.logprob < 0 and p.num_tokens >= 1 for p in programs)


@pytest.mark.slow  # 454 s under a load of 10 on 2 cores; 153 s of CPU time
def test_experiment_run_end_to_end_on_a_tiny_protocol(tmp_path):
    """base and references-sft (2 rounds of 1 LoRA step) on 2 HumanEval training and 2 held-out tasks:
    every unit runs, references-sft replays only the references in both rounds, the results are published,
    and a second invocation finds everything done."""
    protocol = {
        "name": "tiny",
        "runs_dir": str(tmp_path / "runs"),
        "common": {
            "rounds": 2,
            "tasks": {"source": "humaneval", "limit": 4, "holdout": 0.5},
            "generation": {"max_new_tokens": 24, "batch_size": 2},
            "execution": {"workers": 1},
            "training": {"steps": 1, "batch_size": 2},
        },
        "arms": {"base": {"kind": "base"}, "references-sft": {"kind": "references-sft"}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(protocol))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n")
    cmd = [sys.executable, "-m", "pper", "experiment", "run", str(path), "--publish", str(doc)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # against a hang, not a speed limit
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "runs" / "tiny"
    summary = json.loads((root / "results.json").read_text())
    assert set(summary["arms"]) == {"base", "references-sft"}
    assert summary["differences"][0]["arm"] == "references-sft" and summary["differences"][0]["against"] == "base"
    assert summary["arms"]["base"]["humaneval/pass_rate"]["tasks"] == 2
    assert "<!-- results: tiny -->" in doc.read_text() and "| references-sft - base |" in doc.read_text()
    run = root / "references-sft" / "seed-0"
    with sqlite3.connect(run / "buffer.sqlite") as db:
        models = {m for (m,) in db.execute("SELECT DISTINCT model FROM programs")}
    assert models == {"references"}  # the run never sampled: both rounds replayed the references
    assert eval_paths(run, 2)[1].exists() and (run / "checkpoints" / "round-2").exists()
    steps = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert sum(e.get("event") == "step" for e in steps) == 2
    status = subprocess.run(
        [sys.executable, "-m", "pper", "experiment", "status", str(path), "--json"], capture_output=True, text=True
    )
    rows = [json.loads(x) for x in status.stdout.splitlines()]
    assert [(r["unit"], r["state"]) for r in rows] == [
        ("buffer references", "done"),
        ("base seed 0", "done"),
        ("references-sft seed 0", "done"),
    ]
    # the ledger logs a finished unit only past 1 s (a unit found done costs nothing worth logging): filling a
    # buffer of 2 references may take less on an idle machine
    assert all(r["seconds"] > 0 for r in rows if not r["unit"].startswith("buffer"))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "==" not in again.stderr  # nothing left to run


def test_a_terminated_run_still_logs_the_interrupted_units_time(tmp_path):
    import os
    import signal
    import time

    from pper.execution.calibration import cpu_name
    from pper.experiments.runner import TIMINGS, ledger

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(protocol_dict(tmp_path / "runs")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pper", "experiment", "run", str(path)], stderr=subprocess.PIPE, text=True
    )
    (unit,) = units(load_protocol(path))
    try:
        assert proc.stderr.readline().strip() == "== base seed 0"
        deadline = time.monotonic() + 300
        while not (unit.run_dir / CONFIG_FILE).exists():  # written once the unit's clock runs
            assert proc.poll() is None and time.monotonic() < deadline, "the unit did not start"
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)  # held still: it cannot finish the unit before it sees the SIGTERM
        assert not unit.done(), "the unit finished before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=120) == 143
    finally:
        proc.kill()
        proc.stderr.close()
    rows = ledger(tmp_path / "runs" / "t")
    assert [(r["unit"], r["finished"]) for r in rows] == [("base seed 0", False)], tmp_path / TIMINGS
    assert rows[0]["machine"].startswith(f"{cpu_name()}, {os.cpu_count()} cores, torch ")  # where it ran


def test_the_report_names_the_machines_the_ledger_says_the_units_ran_on():
    from pper.experiments.report import where
    from pper.experiments.runner import machines

    rows = [
        {"unit": "base seed 0", "seconds": 3600.0},  # written before the ledger named machines
        {"unit": "btp seed 0", "seconds": 5400.0, "machine": "A, 2 cores, torch 2 (1 threads)"},
        {"unit": "btp seed 1", "seconds": 1800.0, "machine": "A, 2 cores, torch 2 (1 threads)"},
        {"unit": "btp seed 2", "seconds": 1800.0, "machine": "B, 2 cores, torch 2 (2 threads)"},
    ]
    spent = machines(rows)
    assert list(spent.items()) == [("A, 2 cores, torch 2 (1 threads)", 7200.0), ("unrecorded", 3600.0),
                                   ("B, 2 cores, torch 2 (2 threads)", 1800.0)]  # fmt: skip
    assert where(spent) == ("A, 2 cores, torch 2 (1 threads) (2.0 h); a machine the ledger did not record (1.0 h); "
                            "B, 2 cores, torch 2 (2 threads) (0.5 h)")  # fmt: skip
    assert where({"A, 2 cores, torch 2 (1 threads)": 7200.0}) == "A, 2 cores, torch 2 (1 threads)"
    assert where({}) == "no recorded machine"


def test_a_grpo_arm_gets_the_wall_clock_of_its_budget_arm_and_needs_one(tmp_path):
    from pper.experiments.arms import KINDS
    from pper.jsonl import append_jsonl

    data = protocol_dict(tmp_path, btp={"buffer": "b"}, rl={"kind": "grpo", "budget_from": "btp"})
    protocol = validate_protocol({**data, "compare": [["rl", "btp"]]})  # no equal-steps rule for wall-clock arms
    with pytest.raises(PperError, match="budget arm btp seed 0 has not finished"):
        KINDS["grpo"].seconds(protocol, "btp")
    fake_run(protocol, "btp", 0, {"MBPP/1": (1.0, True)})
    btp = next(u for u in units(protocol) if u.arm == "btp")
    append_jsonl(
        protocol.root / "timings.jsonl",
        [{"unit": "buffer b", "seconds": 100.0}, {"unit": "btp seed 0", "seconds": 500.0}],
    )
    phases = [("sampling", 1, 0.5), ("testing", 1, 1.5), ("training", 1, 40.0), ("evaluation", 1, 300.0)]
    rows = [[{"event": "start", "phase": p, "round": r, "time": 0.0}, {"event": "end", "phase": p, "round": r,
             "seconds": s, "time": s}] for p, r, s in phases]  # fmt: skip
    append_jsonl(btp.run_dir / "events.jsonl", [e for pair in rows for e in pair])
    assert KINDS["grpo"].seconds(protocol, "btp") == pytest.approx(142.0)  # buffer + phases, evaluation excluded
    fake_run(protocol, "rl", 0, {"MBPP/1": (0.5, False)})
    rl = next(u for u in units(protocol) if u.arm == "rl")
    budgeted = rl.config.model_copy(update={"rl": rl.config.rl.model_copy(update={"max_seconds": 142.0})})
    (rl.run_dir / CONFIG_FILE).write_text(budgeted.to_yaml())  # what execute runs: the budget in the config
    assert rl.done()
    other = budgeted.model_copy(update={"rl": budgeted.rl.model_copy(update={"learning_rate": 0.5})})
    (rl.run_dir / CONFIG_FILE).write_text(other.to_yaml())
    assert not next(u for u in units(protocol) if u.arm == "rl").done()
    for arms, message in (
        ({"rl": {"kind": "grpo"}}, "needs `budget_from`"),
        ({"rl": {"kind": "grpo", "budget_from": "base"}}, "needs `budget_from`"),  # the base model trains nothing
        ({"x": {"buffer": "b", "budget_from": "base"}}, "`budget_from` is for arms with a wall-clock budget"),
    ):
        with pytest.raises(PperError, match=message):
            validate_protocol(protocol_dict(tmp_path, **arms))


def test_a_bound_at_zero_up_to_rounding_is_noise():
    from pper.experiments.report import _diff_cell

    assert _diff_cell({"mean": -0.05, "ci": [-0.103, -3.3e-18]}).endswith("noise")  # the small run's btp - sft
    assert _diff_cell({"mean": -0.04, "ci": [-0.08, -0.01]}).endswith("**down**")
    assert _diff_cell({"mean": 0.05, "ci": [1e-12, 0.1]}).endswith("noise")


def test_an_arm_that_uses_a_prm_needs_the_protocols_prm_recipe_or_its_own(tmp_path):
    from pper.experiments.runner import status

    prm_arm = {"buffer": "b", "replay": {"prm_weight": 0.5}}
    with pytest.raises(PperError, match=r"arm p uses a PRM \(replay.prm_weight\) but the protocol has no `prm`"):
        validate_protocol(protocol_dict(tmp_path, p=prm_arm))
    validate_protocol(protocol_dict(tmp_path, p={**prm_arm, "prm": {"model": str(tmp_path / "mine")}}))
    invalid = r"prm: invalid configuration\n  prm."  # a recipe's values are checked with the protocol
    for recipe, message in [({"buffer": "nope"}, "prm.buffer: no buffer named 'nope'"),
                            ({"buffer": ["b", "nope"]}, "prm.buffer: no buffer named 'nope'"),
                            ({"buffer": []}, "prm.buffer: name at least one"),
                            ({"buffer": "b", "stesp": 2}, "unknown key 'stesp'"),
                            ({"buffer": "b", "steps": 0}, invalid + "steps"),
                            ({"buffer": "b", "completer": "x"}, invalid + "completer")]:  # fmt: skip
        with pytest.raises(PperError, match=message):
            validate_protocol({**protocol_dict(tmp_path, p=prm_arm), "prm": recipe})
    plain = {"buffer": "b", "replay": {"alpha": 0.5}}
    without = validate_protocol(protocol_dict(tmp_path, p={**prm_arm, "prm": {"model": "x"}}, q=plain))
    protocol = validate_protocol({**protocol_dict(tmp_path, p=prm_arm, q=plain), "prm": {"buffer": "b", "steps": 2}})
    assert protocol.arm_config("p", 0).prm.model == str(tmp_path / "t" / "prm" / "model")
    # an arm that uses no PRM keeps its configuration (and so its run directory) when a recipe is added
    assert protocol.arm_config("q", 0) == without.arm_config("q", 0) and protocol.arm_config("q", 0).prm.model is None
    assert [s.unit for s in status(protocol) if s.unit == "prm"] == ["prm"]  # p needs the protocol's PRM made
    own = {**protocol_dict(tmp_path, p={**prm_arm, "prm": {"model": "x"}}, q=plain), "prm": {"buffer": "b"}}
    assert "prm" not in [s.unit for s in status(validate_protocol(own))]  # an arm with its own PRM does not
    assert protocol.prm_config().prm.steps == 2 and protocol.prm_config().run_dir == tmp_path / "t" / "prm" / "labels"


@pytest.mark.slow  # 174 s on 2 loaded cores (80 s of CPU): samples a buffer, labels it, trains a PRM 2 steps
def test_the_protocols_prm_labels_a_copy_of_its_buffers_and_is_trained_once(tmp_path):
    from pper.buffer import ReplayBuffer
    from pper.experiments.arms import buffer_dir, make_prm, prm_stats
    from pper.experiments.report import prm_lines

    data = protocol_dict(tmp_path, p={"buffer": "b", "replay": {"prm_weight": 0.5}})
    data["common"] = {"tasks": {"source": "humaneval", "limit": 4, "holdout": 0.5}, "execution": {"workers": 1},
                      "generation": {"max_new_tokens": 24, "batch_size": 2}}  # fmt: skip
    data["prm"] = {"buffer": ["b", "references"], "completer": "reference", "steps": 2, "batch_size": 2,
                   "validation": 0.5}  # fmt: skip
    protocol = validate_protocol(data)
    model = make_prm(protocol)
    info = json.loads((model / "prm.json").read_text())
    assert len(info["losses"]) == 2 and info["train_tasks"] and info["validation_tasks"]
    programs = set()
    for name in ("b", "references"):
        with ReplayBuffer.in_run(buffer_dir(protocol, name)) as shared:
            programs |= {(p.task_id, p.text) for p in shared.programs()}
            assert shared.line_searches() == {}  # a shared buffer itself is never labelled
    with ReplayBuffer.in_run(protocol.prm_config().run_dir) as labelled:
        searches = labelled.line_searches()
        stored = {p.id: p for p in labelled.programs()}
    assert {(stored[i].task_id, stored[i].text) for i in searches} == programs  # both buffers' programs, labelled
    references = [s for i, s in searches.items() if stored[i].model == "references"]
    assert len(references) == 2 and all(set(s.labels) == {1} for s in references)  # they pass: every line good
    stats = prm_stats(protocol, 12.0)
    assert stats["programs"] == len(programs) and stats["probes"] >= 1 and stats["completer"] == ["reference"]
    assert stats["buffers"] == ["b", "references"] and "of the b + references buffers labelled" in prm_lines(stats)[0]
    assert set(stats["auc_by_model"]) == {"references", *(stored[i].model for i in searches)}
    data["prm"]["buffer"] = "b"  # a recipe that no longer matches the labelled copy is refused, not reused
    with pytest.raises(PperError, match=r"made from the buffers b \+ references, but .* now names b: remove"):
        make_prm(validate_protocol(data))
    assert stats["auc"] == info["auc"]
    made = (model / "prm.json").stat().st_mtime_ns
    assert make_prm(protocol) == model and (model / "prm.json").stat().st_mtime_ns == made  # trained once


def test_a_prm_that_cannot_be_made_leaves_its_arm_not_run_with_the_reason(tmp_path):
    from pper.experiments.runner import not_run, run_unit

    data = protocol_dict(tmp_path, p={"buffer": "references", "replay": {"prm_weight": 0.5}})
    data["common"] = {"tasks": {"source": "humaneval", "limit": 4, "holdout": 0.5}, "execution": {"workers": 1}}
    data["prm"] = {"buffer": "references", "completer": "teacher"}  # and no teacher anywhere
    protocol = validate_protocol(data)
    unit = next(u for u in units(protocol) if u.arm == "p")
    assert run_unit(unit, echo=lambda _: None) is False
    assert "prm.completer teacher needs a teacher" in not_run(unit)


def test_the_report_gives_each_self_sampling_arms_density_and_stages_round_by_round(tmp_path):
    from pper.buffer import Execution, NewProgram, ReplayBuffer
    from pper.execution.results import ProgramResult, TestResult
    from pper.tasks import load_tasks

    protocol = validate_protocol(protocol_dict(tmp_path, own={}, shared={"buffer": "b"}, later={"buffer": "b"}))
    a, b = load_tasks("humaneval", limit=2)

    def result(*verdicts):
        return ProgramResult(tuple(TestResult(v) for v in verdicts))

    made = {}
    for arm, rounds in (("own", (1, 2)), ("shared", (1,)), ("later", (1, 2))):
        unit = next(u for u in units(protocol) if u.arm == arm)
        unit.run_dir.mkdir(parents=True)
        with ReplayBuffer.in_run(unit.run_dir) as buffer:
            buffer.add_tasks([a, b])
            programs = [NewProgram(a.id, "x = 1", -1.0, 3, "m", 1), NewProgram(b.id, "x = 2", -1.0, 3, "m", 1),
                        NewProgram(b.id, "x = 3", -1.0, 3, "m", 1), NewProgram(a.id, "x = 4", -1.0, 3, "m", 2),
                        NewProgram(b.id, "x = 5", -1.0, 3, "m", 2)][: 3 if rounds == (1,) else 5]  # fmt: skip
            results = [result("passed", "passed"), result("failed", "failed"), result("passed", "failed"),
                       result("failed", "passed"), result("failed", "failed")]  # fmt: skip
            ids = buffer.add_programs(programs)
            buffer.add_executions(Execution(i, r) for i, r in zip(ids, results, strict=False))
            for r in rounds:
                buffer.set_stages(r, {a.id: r, b.id: 1})
        made[arm] = [unit]
    density = density_stats(made)
    assert set(density) == {"own", "later"}  # "shared" sampled nothing itself: its one round is the shared buffer's
    rounds = density["own"]["0"]["density"]
    assert rounds["1"] == {"tasks": 2, "tasks_with_passing_program": 1, "programs": 3,
                           "share_passing_a_test": pytest.approx(2 / 3)}  # fmt: skip
    assert rounds["2"] == {"tasks": 2, "tasks_with_passing_program": 0, "programs": 2, "share_passing_a_test": 0.5}
    table = "\n".join(density_table({"density": density}))
    assert "| own | 0 | 1 | 1 of 2 | 3 | 0.667 | 1: 2 |" in table
    assert "| own | 0 | 2 | 0 of 2 | 2 | 0.500 | 1: 1, 2: 1 |" in table
    assert "| later | 0 | 1 (*shared*: b) | 1 of 2 | 3 |" in table and "| later | 0 | 2 | 0 of 2 |" in table
    assert density_table({"density": {}}) == []


def test_an_archive_carries_the_finished_work_without_models_and_restores_it_elsewhere(tmp_path):
    from pper.experiments import archive, restore
    from pper.experiments.arms import FILLED, KINDS, buffer_dir
    from pper.experiments.runner import ledger, status
    from pper.jsonl import append_jsonl

    def made(root: Path) -> object:
        data = protocol_dict(root, btp={"buffer": "b", "seeds": [0, 1]}, rl={"kind": "grpo", "budget_from": "btp"})
        return validate_protocol(data)

    protocol = made(tmp_path / "here")
    shared = buffer_dir(protocol, "b")
    tasks = load_tasks("humaneval", limit=4)
    with ReplayBuffer.in_run(shared) as b:  # what the references filler writes, from tasks the archive must not hold
        b.add_tasks(tasks)
        b.add_programs([NewProgram(t.id, t.solutions[0], -9.0, 90, "references") for t in tasks])
        programs = b.programs()
    (shared / FILLED).write_text("{}")
    fake_run(protocol, "base", 0, {"MBPP/1": (0.0, False)})
    fake_run(protocol, "btp", 0, {"MBPP/1": (1.0, True)})
    btp0, btp1, rl0 = (
        next(u for u in units(protocol) if u.label == x) for x in ("btp seed 0", "btp seed 1", "rl seed 0")
    )
    quoting = {"task_id": "MBPP/2", "pass_rate": 0.0, "passed": False, "result": "failed: assert f(1) == 2 failed",
               "errors": ["assert f(1) == 2 failed", None],
               "messages": [{"role": "user", "content": "Task: f"}]}  # fmt: skip
    results = next(btp0.run_dir.rglob("*_results.jsonl"))
    with results.open("a") as f:  # an evaluation's results quote the failing test; a repair turn's chat the task
        f.write(json.dumps(quoting) + "\n")
    (btp0.run_dir / "checkpoints" / "round-1" / "model").mkdir(parents=True)
    (btp0.run_dir / "checkpoints" / "round-1" / "model" / "model.safetensors").write_bytes(b"x" * 1000)
    (btp0.run_dir / "checkpoints" / "round-1" / "weights.safetensors").write_bytes(b"x" * 100)
    (btp0.run_dir / "checkpoints" / "round-1" / "checkpoint.json").write_text('{"round": 1}')
    (btp0.run_dir / "model").mkdir()  # the trained model for users
    (btp0.run_dir / "model" / "tokenizer.json").write_text("{}")
    append_jsonl(btp0.run_dir / "events.jsonl", [{"event": "end", "phase": "training", "round": 1, "seconds": 40.0}])
    fake_run(protocol, "rl", 0, {"MBPP/1": (0.5, False)})
    (rl0.run_dir / "rl" / "checkpoint-2").mkdir(parents=True)
    (rl0.run_dir / "rl" / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    (rl0.run_dir / "checkpoints" / "round-1").mkdir(parents=True)
    (rl0.run_dir / "checkpoints" / "round-1" / "rl.json").write_text('{"steps": 2}')
    (btp1.run_dir / "checkpoints").mkdir(parents=True)  # trained, not evaluated: not finished, not archived
    (btp1.run_dir / "checkpoints" / "weights.safetensors").write_bytes(b"x")
    (btp1.run_dir / "not-run.txt").write_text("nothing to replay")  # and its last attempt could not run
    rows = [
        {"unit": u, "seconds": 10.0, "finished": f, "time": t}
        for t, (u, f) in enumerate(
            [
                ("base seed 0", True),
                ("buffer b", True),
                ("btp seed 0", True),
                ("rl seed 0", True),
                ("btp seed 1", False),
            ]
        )
    ]
    append_jsonl(protocol.root / "timings.jsonl", rows)
    budget = KINDS["grpo"].seconds(protocol, "btp")

    dest = tmp_path / "carried"
    got = archive(protocol, dest)
    assert (got.buffers, got.prm, sorted(got.units)) == (["b"], False, ["base seed 0", "btp seed 0", "rl seed 0"])
    assert got.not_run == ["btp seed 1"]  # kept as the reason only
    assert got.line("archived").startswith("archived 3 units (and why 1 could not run), 1 buffers: ")
    kept = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert "btp/seed-0/checkpoints/round-1/checkpoint.json" in kept and "rl/seed-0/checkpoints/round-1/rl.json" in kept
    assert "buffers/b/buffer.sqlite" in kept and "btp/seed-0/events.jsonl" in kept
    assert got.stripped == {"tasks": 4, "references": 4, "quotes": 0, "errors": 0, "rows": 1}
    carried = dest / results.relative_to(protocol.root)
    assert b"f(1) == 2" not in carried.read_bytes() and b"Task: f" not in carried.read_bytes()
    assert json.loads(carried.read_text().splitlines()[-1]) == {**quoting, "result": "failed", "errors": ["", None],
                                                                "messages": []}  # fmt: skip
    assert tasks[0].prompt.encode() not in (dest / "buffers" / "b" / "buffer.sqlite").read_bytes()
    assert not [k for k in kept if k.endswith((".safetensors", ".pt")) or k.startswith("btp/seed-0/model")]
    assert [k for k in kept if k.startswith("btp/seed-1")] == ["btp/seed-1/not-run.txt"]
    assert [r["unit"] for r in ledger(dest)] == ["base seed 0", "buffer b", "btp seed 0", "rl seed 0"]

    elsewhere = made(tmp_path / "there")  # the same protocol on another machine
    back = restore(elsewhere, dest)
    assert sorted(back.units) == ["base seed 0", "btp seed 0", "rl seed 0"] and back.buffers == ["b"]
    assert back.not_run == ["btp seed 1"]
    states = {s.unit: s.state for s in status(elsewhere)}
    assert states == {"buffer b": "done", "base seed 0": "done", "btp seed 0": "done", "rl seed 0": "done",
                      "btp seed 1": "not run"}  # fmt: skip
    assert KINDS["grpo"].seconds(elsewhere, "btp") == budget
    with ReplayBuffer.in_run(buffer_dir(elsewhere, "b")) as b:  # the task data is back, from the task source
        assert b.tasks() == tasks and b.programs() == programs
    again = restore(elsewhere, dest)  # a second restore adds nothing, not even ledger rows
    assert (again.files, again.units, len(ledger(elsewhere.root))) == (0, [], 4)
    (elsewhere.root / "btp" / "seed-0" / "events.jsonl").write_text("")
    with pytest.raises(PperError, match=r"btp/seed-0/events.jsonl exists and differs"):
        restore(elsewhere, dest)
    other = validate_protocol({**protocol_dict(tmp_path / "x"), "name": "u"})
    with pytest.raises(PperError, match="archives protocol 't', not 'u'"):
        restore(other, dest)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(PperError, match="not an archive, so not replaced"):
        archive(protocol, tmp_path / "notes")
    with ReplayBuffer.in_run(shared) as b:  # a prompt later units would read, which no restore could put back
        b.add_group(Group(tasks[0].id, tasks[0].prompt, (1, 2), (Member("pass", (3,), (-0.5,), 0.0),)))
    with pytest.raises(PperError, match=r"buffers/b/buffer.sqlite holds 1 GRPO prompts or repair chats"):
        archive(protocol, tmp_path / "carried-2")
