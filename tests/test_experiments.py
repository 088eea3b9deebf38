"""bench/experiments.py: its protocol files, the statistics of its tables and publishing into a doc."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pper.pipeline import eval_paths

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def experiments():
    spec = importlib.util.spec_from_file_location("experiments", ROOT / "bench" / "experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_protocol_file_gives_valid_arm_configs(experiments, path, tmp_path):
    protocol = experiments.load_protocol(path)
    arms = protocol["arms"]
    assert sum(not a.get("train", True) for a in arms.values()) == 1, "exactly one base arm"
    for name, arm in arms.items():
        if arm.get("train", True):
            assert arm["buffer"] in protocol["buffers"], f"{path.name}: {name} names an unknown buffer"
        overrides = {k: v for k, v in arm.items() if k not in ("buffer", "seeds", "train")}
        for seed in arm.get("seeds", [0]):
            config = experiments.arm_config(protocol, tmp_path, name, seed, overrides)
            assert config.seed == seed
    for name in protocol.get("alpha_sweep", []):
        assert "alpha" in arms[name]["replay"], f"{path.name}: alpha-sweep arm {name} sets no alpha"
    for a, b in protocol.get("compare", []):
        assert a in arms and b in arms


def test_extends_adds_seeds_and_arms_to_the_shared_protocol(experiments):
    small = experiments.load_protocol(ROOT / "configs/experiments/small.yaml")
    more = experiments.load_protocol(ROOT / "configs/experiments/small-extended.yaml")
    assert more["name"] == small["name"] and more["common"] == small["common"]
    assert more["arms"]["btp-rank"]["replay"] == small["arms"]["btp-rank"]["replay"]
    assert more["arms"]["btp-rank"]["seeds"] == [0, 1, 2] and "seeds" not in small["arms"]["btp-rank"]
    assert set(small["arms"]) < set(more["arms"])


def fake_run(root: Path, arm: str, seed: int, round: int, scores: dict[str, tuple[float, bool]]) -> Path:
    """A run directory holding only an evaluation's per-program results (what the summary reads)."""
    run_dir = root / arm / f"seed-{seed}"
    samples, metrics = eval_paths(run_dir, round)
    samples.parent.mkdir(parents=True)
    metrics.parent.mkdir(parents=True)
    rows = [{"task_id": t, "pass_rate": p, "passed": s} for t, (p, s) in scores.items()]
    Path(f"{samples}_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics.write_text("{}")
    return run_dir


def test_summary_averages_seeds_per_task_and_pairs_differences(experiments, tmp_path):
    tasks = [f"MBPP/{i}" for i in range(20)]
    base = {t: (0.5, False) for t in tasks}
    good = [{t: (1.0, True) for t in tasks}, {t: (0.5, i % 2 == 0) for i, t in enumerate(tasks)}]
    protocol = {
        "common": {"rounds": 1},
        "arms": {"base": {"train": False}, "good": {"buffer": "b"}, "same": {"buffer": "b"}},
        "compare": [["good", "same"]],
    }
    done = {
        "base": [fake_run(tmp_path, "base", 0, 0, base)],
        "good": [fake_run(tmp_path, "good", s, 1, good[s]) for s in (0, 1)],
        "same": [fake_run(tmp_path, "same", 0, 1, base)],
    }
    summary = experiments.summarize(protocol, tmp_path, done)
    good_pr = summary["arms"]["good"]["mbpp/pass_rate"]
    assert good_pr["mean"] == pytest.approx(0.75) and good_pr["per_seed"] == [1.0, 0.5]
    assert good_pr["ci"] == (pytest.approx(0.75), pytest.approx(0.75))  # every task scored alike
    strict = summary["arms"]["good"]["mbpp/strict_accuracy"]
    assert strict["mean"] == pytest.approx(0.75) and strict["ci"][0] < 0.75 < strict["ci"][1]
    diffs = {(d["arm"], d["against"]): d for d in summary["differences"]}
    assert diffs["same", "base"]["mbpp/pass_rate"] == {"mean": 0.0, "ci": (0.0, 0.0)}
    assert diffs["good", "same"]["mbpp/pass_rate"]["mean"] == pytest.approx(0.25)
    table = "\n".join(experiments.differences_table(summary))
    assert "| same - base | +0.0 [+0.0, +0.0] noise" in table
    assert "| good - base | +25.0 [+25.0, +25.0] **up**" in table


def test_an_interval_does_not_depend_on_the_other_arms(experiments, tmp_path):
    tasks = [f"MBPP/{i}" for i in range(30)]
    base = {t: (0.0, False) for t in tasks}
    mixed = {t: ((i * 7 % 30) / 29, i % 3 == 0) for i, t in enumerate(tasks)}  # many distinct means
    arms = {"base": {"train": False}, "mixed": {"buffer": "b"}}
    done = {"base": [fake_run(tmp_path, "base", 0, 0, base)], "mixed": [fake_run(tmp_path, "mixed", 0, 1, mixed)]}
    alone = experiments.summarize({"common": {"rounds": 1}, "arms": arms}, tmp_path, done)
    arms = {**arms, "other": {"buffer": "b"}}  # one more arm, summarized before and beside "mixed"
    done = {"base": done["base"], "other": [fake_run(tmp_path, "other", 0, 1, mixed)], "mixed": done["mixed"]}
    beside = experiments.summarize({"common": {"rounds": 1}, "arms": arms}, tmp_path, done)
    ci = alone["arms"]["mixed"]["mbpp/pass_rate"]["ci"]
    assert ci[0] < 0.5 < ci[1]
    assert beside["arms"]["mixed"]["mbpp/pass_rate"]["ci"] == ci
    assert beside["differences"][1]["arm"] == "mixed"
    assert beside["differences"][1]["mbpp/pass_rate"] == alone["differences"][0]["mbpp/pass_rate"]


def test_publish_replaces_only_its_own_block(experiments, tmp_path):
    doc, root = tmp_path / "results.md", tmp_path / "run"
    root.mkdir()
    doc.write_text("# Results\n\nWritten by hand.\n")
    experiments.publish(doc, "small", root, "table one\n")
    experiments.publish(doc, "other", root, "table two\n")
    experiments.publish(doc, "small", root, "table three\n")
    text = doc.read_text()
    assert text.startswith("# Results\n\nWritten by hand.\n")
    assert "table one" not in text and text.count("table three") == 1 and text.count("table two") == 1
    assert text.index("table three") < text.index("table two")  # replaced in place
