"""The validation split, keeping the best round, the kept model (`model/`, `kept.json`) and a split that
changes under a run."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from pper.buffer import NewProgram, ReplayBuffer
from pper.config import load_config
from pper.errors import PperError
from pper.jsonl import append_jsonl
from pper.pipeline import (
    KEPT_FILE,
    best_round,
    checkpoint_dir,
    choose_kept,
    eval_paths,
    keep,
    kept_model,
    prepare,
    read_kept,
    split_tasks,
    write_kept,
)
from pper.report import kept_summary


def _config(tmp_path, **overrides):
    return load_config(overrides={"runs_dir": str(tmp_path), **overrides})


def test_validation_tasks_are_a_seeded_part_of_the_training_tasks(tmp_path):
    train, validation, held_out = split_tasks(_config(tmp_path))
    assert (len(train), len(validation), len(held_out)) == (62, 20, 82)  # HumanEval: 164 = 82 + (62 + 20)
    ids = [{t.id for t in part} for part in (train, validation, held_out)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert split_tasks(_config(tmp_path))[1] == validation  # seeded
    assert split_tasks(_config(tmp_path, seed=1))[1] != validation
    # the held-out half does not depend on tasks.validation: only training tasks are set aside
    assert split_tasks(_config(tmp_path, **{"tasks.validation": 0}))[2] == held_out
    assert split_tasks(_config(tmp_path, **{"tasks.validation": 0}))[1] == []
    prepared = prepare(_config(tmp_path))
    assert json.loads((prepared.dir / "tasks.json").read_text())["validation"] == [t.id for t in validation]
    with ReplayBuffer.in_run(prepared.dir) as buffer:  # validation tasks are not even stored for sampling
        assert {t.id for t in buffer.tasks()} == ids[0]


def test_validation_never_uses_a_sources_own_split(tmp_path, mbpp_path):
    config = _config(tmp_path, **{"tasks.source": f"mbpp:{mbpp_path}", "tasks.split": "train",
                                  "tasks.eval_source": "humaneval", "tasks.limit": 40})  # fmt: skip
    train, validation, _ = split_tasks(config)
    assert len(validation) == 10 and {t.split for t in train + validation} == {"train"}


def test_tasks_an_eval_source_holds_out_are_never_trained_on(tmp_path):
    config = _config(tmp_path, **{"tasks.source": "humaneval", "tasks.limit": 12, "tasks.eval_source": "humaneval",
                                  "tasks.eval_limit": 6, "tasks.validation": 0.25})  # fmt: skip
    with pytest.warns(UserWarning, match="6 of the 12 tasks of tasks.source are also held out"):
        train, validation, held_out = split_tasks(config)
    assert {t.id for t in held_out} == {f"HumanEval/{i}" for i in range(6)}
    assert not {t.id for t in train + validation} & {t.id for t in held_out} and len(train + validation) == 6


def test_fewer_than_ten_validation_tasks_warn(tmp_path):
    with pytest.warns(UserWarning, match="only 2 validation tasks"):
        prepare(_config(tmp_path, name="few", **{"tasks.limit": 20}))  # 10 training tasks, 2 set aside
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(_config(tmp_path, name="off", **{"tasks.limit": 20, "tasks.validation": 0}))


def test_a_changed_split_never_replays_a_now_held_out_tasks_programs(tmp_path):
    """`pper run --force` with another split: programs of tasks the new split holds out (validation or
    held-out) are in the buffer and would be replayed; the run is refused before anything changes."""
    first = _config(tmp_path, name="r", **{"tasks.limit": 40, "tasks.validation": 0})
    moved = _config(tmp_path, name="r", seed=5, **{"tasks.limit": 40, "tasks.validation": 0})  # another split
    trained = [t.id for t in split_tasks(first)[0]]
    still_trained = next(t for t in trained if t in {x.id for x in split_tasks(moved)[0]})
    now_held_out = next(t for t in trained if t in {x.id for x in split_tasks(moved)[2]})
    run_dir = prepare(first).dir
    with ReplayBuffer.in_run(run_dir) as buffer:
        buffer.add_programs([NewProgram(still_trained, "def f():\n    return 1\n", -1.0, 5, "m")])
    prepare(moved, force=True)  # every program in the buffer is of a task the new split still trains on
    prepare(first, force=True)
    with ReplayBuffer.in_run(run_dir) as buffer:
        buffer.add_programs([NewProgram(now_held_out, "def f():\n    return 2\n", -1.0, 5, "m")])
    config_before = (run_dir / "config.yaml").read_text()
    with pytest.raises(PperError, match=f"holds programs of 1 task.*e.g. {now_held_out}.*start a new run"):
        prepare(moved, force=True)
    assert (run_dir / "config.yaml").read_text() == config_before  # refused before changing the run
    # turning validation on sets training tasks aside too
    validation = split_tasks(_config(tmp_path, **{"tasks.limit": 40, "tasks.validation": 0.5}))[1]
    assert {still_trained, now_held_out} & {t.id for t in validation}
    with pytest.raises(PperError, match="holds programs of"):
        prepare(_config(tmp_path, name="r", **{"tasks.limit": 40, "tasks.validation": 0.5}), force=True)


def test_the_best_round_is_kept_and_ties_keep_the_earlier():
    assert best_round({0: 0.5, 1: 0.6, 2: 0.6}) == 1
    assert best_round({0: 0.5, 1: 0.4, 2: 0.7}) == 2
    assert best_round({0: 0.5, 1: 0.5}) == 0
    assert best_round({0: 0.3, 1: 0.1 + 0.2}) == 0  # equal up to rounding: a tie
    per_task = {0: {"a": 0.0, "b": 0.5, "c": 1.0}, 1: {"a": 1.0, "b": 0.5, "c": 1.0}, 2: {"a": 0.0, "b": 0.0, "c": 1.0}}
    kept = choose_kept(per_task)
    v = kept["validation"]
    assert kept["round"] == 1 and v["tasks"] == 3
    assert v["pass_rates"] == {"0": 0.5, "1": pytest.approx(2.5 / 3), "2": pytest.approx(1 / 3)}
    assert v["round_0_pass_rate"] == 0.5 and v["pass_rate"] == pytest.approx(2.5 / 3)
    assert v["difference"] == pytest.approx(1 / 3)
    low, high = v["interval"]
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)  # per-task gains 1, 0, 0
    worse = choose_kept({0: {"a": 1.0, "b": 0.5}, 1: {"a": 0.0, "b": 0.5}})
    assert worse["round"] == 0 and worse["validation"]["difference"] == 0.0
    assert worse["validation"]["interval"] == [0.0, 0.0]


def _fake_round(run_dir, round, rates: dict[str, float]) -> None:
    """Round `round`'s validation results and checkpoint model (a file naming the round)."""
    samples, _ = eval_paths(run_dir, round, validation=True)
    samples.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(f"{samples}_results.jsonl", [{"task_id": t, "pass_rate": r} for t, r in rates.items()])
    model = checkpoint_dir(run_dir, round) / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"round": round}))


def test_the_kept_model_and_its_record(tmp_path):
    config = _config(tmp_path, name="k", rounds=2)
    run_dir = config.run_dir
    _fake_round(run_dir, 0, {"a": 0.0, "b": 0.5})
    _fake_round(run_dir, 1, {"a": 1.0, "b": 0.5})
    _fake_round(run_dir, 2, {"a": 1.0, "b": 0.5})
    record = keep(run_dir, config, validation=True)
    assert record == read_kept(run_dir)
    assert set(record) == {"round", "validation", "rule", "from"} and record["round"] == 1
    assert set(record["validation"]) == {
        "tasks", "pass_rates", "round_0_pass_rate", "pass_rate", "difference", "interval"
    }  # fmt: skip
    model, kept = kept_model(run_dir)
    assert kept == record and json.loads((model / "config.json").read_text()) == {"round": 1}
    # without validation tasks the last round is kept
    last = keep(run_dir, config, validation=False)
    assert last["round"] == 2 and last["validation"] is None
    assert json.loads((run_dir / "model" / "config.json").read_text()) == {"round": 2}


def test_a_kill_while_writing_the_kept_model_never_leaves_a_wrong_one(tmp_path, monkeypatch):
    import pper.pipeline

    config = _config(tmp_path, name="k", rounds=2)
    run_dir = config.run_dir
    for r in range(3):
        _fake_round(run_dir, r, {"a": 0.0})
    write_kept(run_dir, config, {"round": 1, "validation": None})

    def killed(*args):
        raise KeyboardInterrupt  # the process dies after model/ is replaced, before kept.json is written

    monkeypatch.setattr(pper.pipeline, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        write_kept(run_dir, config, {"round": 2, "validation": None})
    assert not (run_dir / KEPT_FILE).exists()  # the old record no longer vouches for model/
    with pytest.raises(PperError, match="has no kept model yet.*run the same `pper run` command again"):
        kept_model(run_dir)
    monkeypatch.undo()
    write_kept(run_dir, config, {"round": 2, "validation": None})  # the next run finishes it
    model, kept = kept_model(run_dir)
    assert kept["round"] == 2 and json.loads((model / "config.json").read_text()) == {"round": 2}


def test_when_no_round_beats_the_base_the_base_model_is_shipped(tmp_path):
    from safetensors.torch import load_file

    from pper.generation import resolve_model

    config = _config(tmp_path, name="b", rounds=1)
    _fake_round(config.run_dir, 0, {"a": 1.0, "b": 0.5})
    _fake_round(config.run_dir, 1, {"a": 0.0, "b": 0.5})
    assert keep(config.run_dir, config, validation=True)["round"] == 0
    model, _ = kept_model(config.run_dir)
    base = load_file(resolve_model(config.generation.model)[1] / "model.safetensors")
    shipped = load_file(model / "model.safetensors")
    assert shipped.keys() == base.keys() and all((shipped[k] == base[k]).all() for k in base)
    assert (model / "tokenizer.json").exists()


def test_the_report_paragraph_on_the_kept_model():
    held_out = {
        r: {"overall": {"pass_rate": p, "strict_accuracy": p / 2, "tasks": 82}} for r, p in ((0, 0.2), (1, 0.3))
    }
    v = {"tasks": 20, "pass_rates": {"0": 0.2, "1": 0.25}, "round_0_pass_rate": 0.2, "pass_rate": 0.25,
         "difference": 0.05, "interval": [-0.01, 0.11]}  # fmt: skip
    text = "\n".join(kept_summary({"round": 1, "validation": v, "from": "checkpoints/round-1/model"}, held_out))
    assert "**Kept round 1**: validation pass rate 0.2500 against 0.2000 for round 0" in text
    assert "[-0.0100, +0.1100] (it includes 0: the gain may be noise)" in text
    assert "round 0 (the base model): pass rate 0.2000, strict accuracy 0.1000" in text
    assert "round 1 (the kept model): pass rate 0.3000, strict accuracy 0.1500" in text
    worse = {**v, "pass_rates": {"0": 0.2, "1": 0.15}, "pass_rate": 0.2, "difference": 0.0, "interval": [0.0, 0.0]}
    text = "\n".join(kept_summary({"round": 0, "validation": worse, "from": "base model"}, held_out))
    assert "**No round beat the base model** on the 20 validation tasks, so the run ships the base model" in text
    assert "round 1 0.1500" in text and "round 0 (the base model, kept): pass rate 0.2000" in text
    assert "round 1 (the kept" not in text
    text = "\n".join(kept_summary({"round": 1, "validation": None}, {1: held_out[1]}))
    assert "the last round" in text and "round 0 (the base model): not evaluated (`evaluation.before: false`)" in text
    assert kept_summary(None, {}) == ["No kept model yet: the run has not finished its last round."]


def test_pper_eval_of_a_run_without_a_kept_model_says_so(tmp_path):
    run_dir = prepare(_config(tmp_path, name="unfinished")).dir
    done = subprocess.run(
        [sys.executable, "-m", "pper", "eval", "--model", str(run_dir), "--tasks", "humaneval", "--limit", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "has no kept model yet" in done.stderr and "run the same `pper run` command again" in done.stderr
