"""`pper prm label`: line labels of a run's programs by binary search, stored in the buffer, resumable, exported."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from pper.buffer import Execution, NewProgram, ReplayBuffer, export_rows
from pper.config import validate_config
from pper.execution import Executor
from pper.tasks import load_tasks


def _tasks_with_bodies(limit: int, n: int):
    """The first `n` of the first `limit` HumanEval tasks whose reference body has 3 lines or more."""
    tasks = load_tasks("humaneval", limit=limit)
    return [t for t in tasks if len(t.solutions[0].splitlines()) - len(t.prompt.splitlines()) >= 3][:n]


def _buggy(task):
    """The reference with its body's middle statement made a raise, and that line's index (0-based)."""
    lines = task.solutions[0].splitlines()
    body = [i for i in range(len(task.prompt.splitlines()), len(lines)) if lines[i].strip()]
    k = body[len(body) // 2]
    indent = lines[k][: len(lines[k]) - len(lines[k].lstrip())]
    return "\n".join(lines[:k] + [indent + "raise ValueError('bug')"] + lines[k + 1 :]) + "\n", k


def _run_dir(tmp_path, tasks, generation=None):
    """A run directory as `pper run` leaves it after testing: its config and a buffer of tested programs."""
    run = tmp_path / "run"
    run.mkdir()
    config = validate_config({"generation": generation or {}, "execution": {"workers": 1}})
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    bugs = {}
    with ReplayBuffer(run / "buffer.sqlite") as buffer, Executor(workers=1) as executor:
        buffer.add_tasks(tasks)
        programs = []
        for t in tasks:
            text, k = _buggy(t)
            programs += [NewProgram(t.id, t.solutions[0], -1.0, 10, "m"), NewProgram(t.id, text, -2.0, 10, "m")]
            bugs[t.id] = k
        ids = buffer.add_programs(programs)
        buffer.add_executions(Execution(i, executor.run(next(t for t in tasks if t.id == p.task_id), p.text))
                              for i, p in zip(ids, programs, strict=True))  # fmt: skip
    return run, bugs


def _kill_9_once(args, ready):
    """Start `pper prm ARGS`, kill -9 it as soon as `ready()` is true (within 10 minutes, before it ends)."""
    proc = subprocess.Popen([sys.executable, "-m", "pper", "prm", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 600
    try:
        while not ready():
            assert proc.poll() is None, f"pper prm {args[0]} ended before the kill"
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _label(run, *args, **popen):
    return subprocess.run([sys.executable, "-m", "pper", "prm", "label", str(run), *args],
                          capture_output=True, text=True, timeout=900, **popen)  # fmt: skip


def test_labels_find_each_known_bug_and_a_second_call_resumes(tmp_path):
    tasks = _tasks_with_bodies(12, 5)
    run, bugs = _run_dir(tmp_path, tasks)
    first = _label(run, "--completer", "reference", "--max-programs", "4")
    assert first.returncode == 0, first.stderr
    assert "labelled 4 programs (0 already labelled)" in first.stderr and "stopped by prm.max_programs" in first.stderr
    second = _label(run, "--completer", "reference")
    assert second.returncode == 0, second.stderr
    assert f"labelled {2 * len(tasks) - 4} programs (4 already labelled)" in second.stderr
    with ReplayBuffer(run / "buffer.sqlite") as buffer:
        searches = buffer.line_searches()
        programs = {p.id: p for p in buffer.programs()}
        rows = {r["program_id"]: r for r in export_rows(buffer)}
    assert len(searches) == 2 * len(tasks)
    for pid, search in searches.items():
        p = programs[pid]
        m = len(p.text.splitlines())
        assert len(search.labels) == m and rows[pid]["line_labels"] == list(search.labels)
        if p.result.all_passed:  # every line good, no probe
            assert search.labels == (1,) * m and search.probes == ()
        else:  # the raise is the first bad line, found within the budget past the reference's shared lines
            k = bugs[p.task_id]
            assert search.first_bad == k + 1 and search.labels == (1,) * k + (0,) * (m - k)
            assert 1 <= len(search.probes) <= 1 + math.ceil(math.log2(m - k))
            assert search.completer == "reference" and search.completions == 0
    good = sum(sum(s.labels) for s in searches.values())
    bad = sum(len(s.labels) for s in searches.values()) - good
    printed = [tuple(int(x) for x in e.split("labels: ")[1].split(" (")[0].replace(" good,", "").split()[:2])
               for e in (first.stderr, second.stderr)]  # fmt: skip
    assert (sum(g for g, _ in printed), sum(b for _, b in printed)) == (good, bad)  # the class balance printed
    total_probes = sum(len(s.probes) for s in searches.values())
    probes_printed = [int(e.split(" probes")[0].rsplit(" ", 1)[1]) for e in (first.stderr, second.stderr)]
    assert sum(probes_printed) == total_probes


def test_max_programs_counts_the_programs_it_can_label_not_those_skipped_for_want_of_a_reference(tmp_path):
    from dataclasses import replace

    from pper.prm.config import PrmConfig
    from pper.prm.label import label_programs

    tasks = _tasks_with_bodies(12, 3)
    tasks = [replace(t, solutions=()) for t in tasks[:2]] + tasks[2:]  # the first two without a reference
    with ReplayBuffer(tmp_path / "buffer.sqlite") as buffer, Executor(workers=1) as executor:
        buffer.add_tasks(tasks)
        programs = [NewProgram(t.id, t.prompt + f"    return {k}\n", -1.0, 10, "m") for t in tasks for k in (0, 1)]
        ids = buffer.add_programs(programs)  # 4 programs of tasks without a reference, listed first
        buffer.add_executions(Execution(i, executor.run(next(t for t in tasks if t.id == p.task_id), p.text))
                              for i, p in zip(ids, programs, strict=True))  # fmt: skip
        summary = label_programs(buffer, executor, PrmConfig(completer="reference", max_programs=2))
        assert (summary.labelled, summary.skipped, summary.stopped_by) == (2, 4, None)
        assert {p.task_id for p in buffer.programs() if p.id in buffer.line_searches()} == {tasks[2].id}


@pytest.mark.slow
def test_labelling_with_the_model_resumes_after_kill_9(tmp_path):
    tasks = _tasks_with_bodies(12, 3)
    run, _ = _run_dir(tmp_path, tasks, {"max_new_tokens": 24, "batch_size": 2})
    args = ("--completer", "model", "--completions", "1", "--min-pass-rate", "0", "--max-pass-rate", "0.99")
    db = run / "buffer.sqlite"
    searches = "SELECT COUNT(*) FROM line_searches"
    _kill_9_once(["label", str(run), *args], lambda: sqlite3.connect(db).execute(searches).fetchone()[0] >= 1)
    before = dict(sqlite3.connect(db).execute("SELECT program_id, created FROM line_searches").fetchall())
    assert 1 <= len(before) < len(tasks)  # killed part way
    done = _label(run, *args)
    assert done.returncode == 0, done.stderr
    assert f"labelled {len(tasks) - len(before)} programs ({len(before)} already labelled)" in done.stderr
    after = dict(sqlite3.connect(db).execute("SELECT program_id, created FROM line_searches").fetchall())
    assert len(after) == len(tasks) and all(after[p] == t for p, t in before.items())  # finished ones not redone
    labels = sqlite3.connect(db).execute("SELECT program_id, COUNT(*) FROM line_labels GROUP BY program_id")
    assert all(n >= 1 for _, n in labels)


@pytest.mark.slow
def test_a_prm_trains_on_the_labels_reports_auc_and_scores_the_run(tmp_path):
    tasks = _tasks_with_bodies(20, 6)
    run, _ = _run_dir(tmp_path, tasks)
    assert _label(run, "--completer", "reference").returncode == 0
    trained = _label(run, "--completer", "reference")  # nothing left to label
    assert "labelled 0 programs (12 already labelled)" in trained.stderr
    done = subprocess.run([sys.executable, "-m", "pper", "prm", "train", str(run), "--steps", "3", "--batch-size", "2",
                           "--validation", "0.34"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = json.loads((run / "prm" / "prm.json").read_text())
    assert len(info["losses"]) == 3 and all(x > 0 for x in info["losses"])
    assert len(info["validation_tasks"]) == 2 and not set(info["validation_tasks"]) & set(info["train_tasks"])
    val = info["balance"]["validation"]
    assert val["programs"] == 4 and 0 < val["good"] < val["lines"]  # both classes: the AUCs are defined
    assert set(info["auc"]) == {"prm", "logprob", "position"} and all(0 <= v <= 1 for v in info["auc"].values())
    assert f"ROC AUC: prm {info['auc']['prm']:.3f}" in done.stderr
    scored = subprocess.run([sys.executable, "-m", "pper", "prm", "score", str(run)],
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    with ReplayBuffer(run / "buffer.sqlite") as buffer:
        scores = buffer.prm_scores()[info["id"]]
        programs = {p.id: p for p in buffer.programs()}
    assert set(scores) == set(programs)
    prompt_lines = {t.id: len(t.prompt.rstrip().splitlines()) for t in tasks}
    for i, lines in scores.items():  # every line past the given prompt, each in (0, 1)
        p = programs[i]
        assert sorted(lines) == list(range(prompt_lines[p.task_id] + 1, len(p.text.splitlines()) + 1))
        assert all(0 < x < 1 for x in lines.values())
    assert f"{len(programs)} programs" in scored.stderr
    # the saved PRM, loaded again, scores as the trained one did (its LoRA settings and head came back)
    from pper.prm.model import PRM, line_input

    loaded = PRM.load(run / "prm")
    p = programs[min(programs)]
    item = line_input(next(t for t in tasks if t.id == p.task_id), p.text, loaded.tokenizer)
    again = loaded.scores(item)
    assert again.keys() == scores[p.id].keys()
    assert all(abs(again[k] - scores[p.id][k]) < 1e-5 for k in again)
    rescored = subprocess.run([sys.executable, "-m", "pper", "prm", "score", str(run)],
                              capture_output=True, text=True, timeout=900)  # fmt: skip
    assert "0 programs" in rescored.stderr  # a second call scores only what is not scored yet


def test_a_save_killed_over_a_trained_prm_leaves_no_trained_prm(tmp_path):
    """`prm.json` is written last; over an earlier PRM, the earlier one goes first, so a save that dies writing the
    weights (here: a directory where the backbone file goes) leaves a directory `prm_dir` refuses."""
    from pper.errors import PperError
    from pper.generation import load_model
    from pper.prm.model import BACKBONE_FILE, PRM
    from pper.prm.train import prm_dir, save_prm

    model, tokenizer, _ = load_model("default")
    prm, target = PRM(model, tokenizer), tmp_path / "prm"
    save_prm(prm, target, {"id": "first", "base_model": "default", "dtype": "float32"})
    config = validate_config({"prm": {"model": str(target)}})
    assert prm_dir(config, tmp_path) == target
    (target / BACKBONE_FILE).unlink()
    (target / BACKBONE_FILE).mkdir()
    with pytest.raises(Exception):  # noqa: B017 - whatever safetensors raises for it
        save_prm(prm, target, {"id": "second", "base_model": "default", "dtype": "float32"})
    with pytest.raises(PperError, match="no trained PRM"):
        prm_dir(config, tmp_path)


@pytest.mark.slow
def test_prm_training_killed_9_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    from pper.prm.model import BACKBONE_FILE, HEAD_FILE
    from pper.prm.train import train_prm

    tasks = _tasks_with_bodies(20, 6)
    run, _ = _run_dir(tmp_path, tasks)
    assert _label(run, "--completer", "reference").returncode == 0
    settings = {"steps": 8, "batch_size": 2, "validation": 0.34, "checkpoint_every": 2}
    whole = train_prm(run, settings, tmp_path / "whole", show_progress=False)
    assert whole["resumed_at"] is None and not (tmp_path / "whole.checkpoint").exists()
    args = ["--steps", "8", "--batch-size", "2", "--validation", "0.34", "--checkpoint-every", "2"]
    info = run / "prm.checkpoint" / "checkpoint.json"
    _kill_9_once(["train", str(run), *args], info.exists)
    step = json.loads(info.read_text())["step"]
    assert step in (2, 4, 6) and not (run / "prm" / "prm.json").exists()
    done = subprocess.run([sys.executable, "-m", "pper", "prm", "train", str(run), *args],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {step}; 8 steps" in done.stderr, done.stderr[-600:]
    resumed = json.loads((run / "prm" / "prm.json").read_text())
    assert resumed["resumed_at"] == step and not (run / "prm.checkpoint").exists()
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-5)  # the same batches, the same updates
    assert resumed["auc"] == pytest.approx(whole["auc"], rel=1e-4)
    for name in (BACKBONE_FILE, HEAD_FILE):
        a, b = load_file(run / "prm" / name), load_file(tmp_path / "whole" / name)
        assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    # a checkpoint of other settings is not resumed: the training starts over
    with pytest.warns(UserWarning, match="other labels or settings"):
        import shutil

        shutil.copytree(tmp_path / "whole", tmp_path / "other.checkpoint")
        (tmp_path / "other.checkpoint" / "checkpoint.json").write_text(json.dumps({"fingerprint": "x", "step": 2}))
        again = train_prm(run, {**settings, "steps": 2}, tmp_path / "other", show_progress=False)
    assert again["resumed_at"] is None and len(again["losses"]) == 2


def test_a_prm_checkpoint_that_does_not_match_or_is_half_deleted_is_moved_aside_not_resumed(tmp_path):
    import numpy as np
    import torch

    from pper.files import remove_dir
    from pper.generation import load_model
    from pper.prm.model import BACKBONE_FILE, PRM
    from pper.prm.train import _load_checkpoint, _save_checkpoint

    model, tokenizer, _ = load_model("default")
    prm = PRM(model, tokenizer)
    optimizer = torch.optim.AdamW(prm.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    rng.integers(0, 10, 5)  # a generator state past its seed
    path = tmp_path / "prm.checkpoint"
    _save_checkpoint(path, "f", prm, optimizer, rng, [0.5, 0.25], 3.0)
    drawn = rng.integers(0, 10, 5).tolist()
    fresh = np.random.default_rng(0)
    info = _load_checkpoint(path, "f", 4, prm, optimizer, fresh)
    assert info["step"] == 2 and info["losses"] == [0.5, 0.25] and info["seconds"] == 3.0
    assert fresh.integers(0, 10, 5).tolist() == drawn  # the batch generator goes on where it was
    path.rename(tmp_path / "prm.checkpoint.old")  # killed between replace_dir's renames: put back, then read
    assert _load_checkpoint(path, "f", 4, prm, optimizer, np.random.default_rng(0))["step"] == 2
    for why, args in [("other labels or settings", ("g", 4)), ("not before the 2 steps", ("f", 2))]:
        with pytest.warns(UserWarning, match=why):
            assert _load_checkpoint(path, *args, prm, optimizer, np.random.default_rng(0)) is None
        stale = tmp_path / "prm.checkpoint.stale"
        assert not path.exists() and (stale / "checkpoint.json").exists()  # kept aside, not deleted
        stale.rename(path)
    (path / BACKBONE_FILE).unlink()  # a removal killed part way, before the fix that renames first
    before = {n: p.detach().clone() for n, p in prm.model.named_parameters() if p.requires_grad}
    with pytest.warns(UserWarning, match="cannot be read"):
        assert _load_checkpoint(path, "f", 4, prm, optimizer, np.random.default_rng(0)) is None
    after = {n: p for n, p in prm.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing half-restored
    assert _load_checkpoint(path, "f", 4, prm, optimizer, np.random.default_rng(0)) is None  # nothing left there
    for leftover in ("prm.checkpoint", "prm.checkpoint.tmp", "prm.checkpoint.old"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "x").write_text("x")
    remove_dir(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prm.checkpoint.stale"]
