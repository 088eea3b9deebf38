"""Reranking by the PRM: the order (`pper.prm.rerank`), `generation.rerank: prm` in `pper run` (the buffer keeps
the PRM's top k of `candidates` programs per task), and best-of-n evaluation (`pper eval --select`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pper.config import load_config
from pper.errors import PperError
from pper.evaluation import evaluate_best_of_n
from pper.evaluation.best_of_n import separation
from pper.execution import Executor
from pper.generation import Candidate, load_model, transformers_sampler
from pper.generation.config import GenerationConfig
from pper.pipeline import run
from pper.prm.model import PRM, line_input
from pper.prm.rerank import mean_logprob, mean_score, ranking, top_k
from pper.tasks import load_tasks

MODEL = "smollm2-135m-instruct"


def _candidate(name: str, logprob: float, num_tokens: int = 10) -> Candidate:
    return Candidate("t", name, name, logprob, num_tokens, "m")


def test_top_k_keeps_the_best_mean_scores_unscored_last_ties_by_mean_token_logprob():
    a, b, c, d, e = (_candidate(n, lp, t) for n, lp, t in
                     [("a", -5.0, 10), ("b", -1.0, 10), ("c", -9.0, 10), ("d", -3.0, 2), ("e", 0.0, 10)])  # fmt: skip
    scores = [{1: 0.9, 2: 0.1}, {1: 0.2}, {1: 0.7, 3: 0.8}, {2: 0.5}, {}]  # means 0.5, 0.2, 0.75, 0.5, none
    # c first (0.75); a and d tie at 0.5: a's -5/10 = -0.5 beats d's -3/2 = -1.5; then b; e, unscored, last
    assert [x.program for x in top_k([a, b, c, d, e], scores, 5)] == ["c", "a", "d", "b", "e"]
    assert [x.program for x in top_k([a, b, c, d, e], scores, 2)] == ["c", "a"]
    assert top_k([e, b], [{}, {1: 0.0}], 1) == [b]  # a score of 0 still ranks before no score
    assert top_k([a], [{1: 0.3}], 3) == [a]  # fewer candidates than k: all of them
    assert mean_score({}) is None and mean_score({1: 0.25, 4: 0.75}) == 0.5
    assert mean_logprob(-4.0, 8) == -0.5 and mean_logprob(None, 8) is None and mean_logprob(-4.0, 0) is None
    assert ranking([None, None, None], [None, -2.0, -1.0]) == [2, 1, 0]  # by log-probability; none last
    assert ranking([0.5, 0.5], [-1.0, -1.0]) == [0, 1]  # a full tie: the earlier sample
    with pytest.raises(ValueError, match="one set of line scores per candidate"):
        top_k([a, b], [{}], 1)


def test_rerank_prm_needs_more_candidates_than_k_and_a_sampling_mode():
    assert GenerationConfig(rerank="prm", candidates=4, k=3).candidates == 4
    assert GenerationConfig().rerank == "none" and GenerationConfig().candidates is None
    with pytest.raises(ValueError, match="set generation.candidates above k"):
        GenerationConfig(rerank="prm", k=3)
    with pytest.raises(ValueError, match=r"set generation.candidates above k \(got 3\)"):
        GenerationConfig(rerank="prm", k=3, candidates=3)
    with pytest.raises(ValueError, match="use mode beam or sample, not greedy"):
        GenerationConfig(rerank="prm", mode="greedy", k=1, candidates=3)
    with pytest.raises(ValueError, match="set rerank to 'prm'"):
        GenerationConfig(candidates=5)
    with pytest.raises(PperError, match="generation.candidates above k"):
        load_config(overrides={"generation.rerank": "prm", "generation.k": 2})


@pytest.fixture(scope="module")
def saved_prm(tmp_path_factory):
    """A PRM on the default model with an untrained head, saved: its scores are what the claims are about."""
    import torch

    torch.manual_seed(0)
    model, tokenizer, _ = load_model(MODEL)
    path = tmp_path_factory.mktemp("prm") / "prm"
    PRM(model, tokenizer).save(path, {"id": "test-prm", "base_model": MODEL, "dtype": "float32"})
    return path


def _expected_top(prm, task, candidates, k):
    """The top k by the PRM's mean line score, ties by mean token log-probability, written out here."""
    means = []
    for c in candidates:
        s = prm.scores(line_input(task, c.program, prm.tokenizer, 2048))
        means.append(sum(s.values()) / len(s) if s else None)
    lps = [c.logprob / c.num_tokens for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (means[i] is None, -(means[i] or 0), -lps[i], i))
    return [candidates[i].program for i in order[:k]], means


def test_a_reranked_run_stores_the_prms_top_k_of_the_candidates(tmp_path, saved_prm):
    generation = {"k": 2, "candidates": 3, "rerank": "prm", "max_new_tokens": 16, "batch_size": 1}
    overrides = {
        "runs_dir": str(tmp_path), "name": "rerank", "tasks.source": "humaneval", "tasks.limit": 2,
        "tasks.holdout": 0, "tasks.validation": 0, "execution.workers": 1, "training.steps": 0, "rounds": 1,
        "prm.model": str(saved_prm), **{f"generation.{key}": v for key, v in generation.items()},
    }  # fmt: skip
    done = run(load_config(overrides=overrides), show_progress=False)
    from pper.buffer import ReplayBuffer

    with ReplayBuffer(done.dir / "buffer.sqlite") as buffer:
        programs = buffer.programs()
    # the candidates again, sampled as the run did (beam search of width 3 on the base model, one task a batch)
    tasks = load_tasks("humaneval", limit=2)
    sampler = transformers_sampler(GenerationConfig(k=3, max_new_tokens=16, batch_size=1), 0)
    candidates = {t.id: c for t, c in sampler.sample(tasks, "beam", 3)}
    prm = PRM.load(saved_prm)
    reordered = 0
    for t in tasks:
        assert len(candidates[t.id]) == 3
        kept, _ = _expected_top(prm, t, candidates[t.id], 2)
        assert sorted(p.text for p in programs if p.task_id == t.id) == sorted(kept)
        reordered += sorted(kept) != sorted(c.program for c in candidates[t.id][:2])
    assert reordered  # the PRM keeps another pair than the two best beams somewhere: reranking made a difference
    events = [json.loads(line) for line in (done.dir / "events.jsonl").read_text().splitlines()]
    logged = [e for e in events if e.get("event") == "rerank"]
    assert [(e["round"], e["tasks"], e["sampled"], e["kept"], e["prm"]) for e in logged] == [(1, 2, 6, 4, "test-prm")]


def test_reranking_keeps_k_distinct_programs_when_one_was_sampled_twice(saved_prm):
    from pper.prm.rerank import Rerank

    task = load_tasks("humaneval", limit=1)[0]
    body = task.prompt + "    return {}\n"
    a, b = _candidate(body.format("True"), -5.0), _candidate(body.format("False"), -5.0)
    twice = _candidate(body.format("True"), -1.0)  # the same program again (another sample of it)
    rerank = Rerank(PRM.load(saved_prm), k=3)
    kept = rerank(task, [a, b, twice])
    assert sorted(k.program for k in kept) == sorted([a.program, b.program])  # each program once
    assert rerank.sampled == 3 and rerank.kept == 2


def _eval(tmp_path, *args):
    cmd = [sys.executable, "-m", "pper", "eval", "--tasks", "humaneval", "--limit", "2", "--out", str(tmp_path)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=900)


def test_pper_eval_select_prm_without_a_prm_is_refused_before_loading_anything(tmp_path):
    done = _eval(tmp_path, "--n", "3", "--select", "prm")
    assert done.returncode != 0 and "--select prm needs --prm DIR" in done.stderr
    done = _eval(tmp_path, "--select", "logprob")
    assert done.returncode != 0 and "--select chooses one of --n N >= 2" in done.stderr
    assert not (tmp_path / "samples.jsonl").exists()


def test_best_of_n_picks_each_criterions_argmax_on_the_same_samples(tmp_path, saved_prm):
    tasks = [t for t in load_tasks("humaneval", limit=54) if t.id in ("HumanEval/2", "HumanEval/53")]
    sampler = transformers_sampler(GenerationConfig(max_new_tokens=24, temperature=1.0), 0)
    prm = PRM.load(saved_prm)
    prm.info["train_tasks"] = ["HumanEval/53", "HumanEval/99"]  # as if trained on one of the evaluated tasks
    with Executor(workers=1) as executor, pytest.warns(UserWarning, match="1 of the 2 tasks .* PRM was trained on"):
        result = evaluate_best_of_n(tasks, tmp_path / "samples.jsonl", executor, sampler, 3, "prm", prm,
                                    metrics_path=tmp_path / "metrics.json", show_progress=False)  # fmt: skip
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert set(result["seconds"]) == {"sampling", "testing", "selection"}
    b = result["best_of_n"]
    assert (b["n"], b["select"], b["prm"]) == (3, "prm", "test-prm")
    results = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    by_task: dict[str, list[dict]] = {}
    for row in sorted(results, key=lambda r: r["sample"]):
        by_task.setdefault(row["task_id"], []).append(row)
    assert sorted(by_task) == ["HumanEval/2", "HumanEval/53"] and all(len(rows) == 3 for rows in by_task.values())
    lines = (tmp_path / "samples.best_of_n.jsonl").read_text().splitlines()
    choices = {c["task_id"]: c for c in map(json.loads, lines)}
    by_id = {t.id: t for t in tasks}
    chosen: dict[str, list[dict]] = {"logprob": [], "prm": [], "oracle": []}
    differ = 0
    for task_id, rows in by_task.items():
        # a sample without a program (no log-probability, no scored line) can never be chosen over one with
        lps = [r["logprob"] / r["num_tokens"] if r.get("num_tokens") else float("-inf") for r in rows]
        means = [mean_score(prm.scores(line_input(by_id[task_id], r["program"], prm.tokenizer, 2048))) for r in rows]
        means = [float("-inf") if m is None else m for m in means]
        picked = choices[task_id]["chosen"]  # the argmax; ties: the PRM's by log-probability, then the earlier
        assert picked["logprob"] == max(range(3), key=lambda i: (lps[i], -i))
        assert picked["prm"] == max(range(3), key=lambda i: (means[i], lps[i], -i))
        differ += picked["logprob"] != picked["prm"]
        assert rows[picked["oracle"]]["pass_rate"] == max(r["pass_rate"] for r in rows)
        for criterion in chosen:
            chosen[criterion].append(rows[picked[criterion]])
    assert differ  # the two criteria are not the same choice here
    assert b["separation"] == separation(list(choices.values()))
    assert (b["separation"]["samples"], b["separation"]["passing"]) == (6, sum(r["passed"] for r in results))
    fractions = [sum(r["passed"] for r in rows) / 3 for rows in by_task.values()]
    assert 0 < sum(fractions) < 2  # some samples pass and some fail: pass@1 is not 0 or 1 by default
    assert b["pass@1"] == pytest.approx(sum(fractions) / 2) == result["overall"]["pass@1"]
    assert b["pass@3"] == pytest.approx(sum(any(r["passed"] for r in rows) for rows in by_task.values()) / 2)
    for criterion, rows in chosen.items():  # each choice scored on its chosen programs alone
        assert b["chosen_by"][criterion]["strict_accuracy"] == pytest.approx(sum(r["passed"] for r in rows) / 2)
        assert b["chosen_by"][criterion]["pass_rate"] == pytest.approx(sum(r["pass_rate"] for r in rows) / 2)
        assert b["chosen_by"][criterion]["samples"] == 2
    assert b["chosen_by"]["oracle"]["strict_accuracy"] == pytest.approx(b["pass@3"])
    d, by = b["differences"], b["chosen_by"]  # paired over the same tasks: the means are the differences of means
    assert sorted(d) == ["logprob - random", "prm - logprob", "prm - random"]
    for name, first, second in (("prm - logprob", by["prm"], by["logprob"]), ("prm - random", by["prm"], b),
                                ("logprob - random", by["logprob"], b)):  # fmt: skip
        strict = second.get("strict_accuracy", b["pass@1"])
        assert d[name]["strict_accuracy"][0] == pytest.approx(first["strict_accuracy"] - strict)
        assert d[name]["pass_rate"][0] == pytest.approx(first["pass_rate"] - second["pass_rate"])
        assert all(lo <= m <= hi for m, lo, hi in d[name].values())


def test_best_of_n_differences_are_paired_by_task():
    from pper.evaluation.best_of_n import differences

    values = {
        "random": {"strict_accuracy": [0.5, 0.5, 0.25, 0.75], "pass_rate": [0.5] * 4},
        "logprob": {"strict_accuracy": [0.0, 0.0, 0.0, 0.0], "pass_rate": [0.0, 0.5, 1.0, 0.5]},
        "prm": {"strict_accuracy": [1.0, 1.0, 1.0, 1.0], "pass_rate": [1.0, 0.5, 0.0, 0.5]},
        "oracle": {"strict_accuracy": [1.0] * 4, "pass_rate": [1.0] * 4},
    }
    d = differences(values)
    assert sorted(d) == ["logprob - random", "prm - logprob", "prm - random"]  # the oracle is a ceiling, not a choice
    assert d["prm - logprob"]["strict_accuracy"] == [1.0, 1.0, 1.0]  # every task: the same difference
    assert d["prm - random"]["strict_accuracy"][0] == pytest.approx(0.5)
    mean, low, high = d["prm - logprob"]["pass_rate"]  # +1, 0, -1, 0: centred on 0, and the interval says so
    assert mean == 0.0 and low < 0 < high
    assert "prm - logprob" not in differences({k: v for k, v in values.items() if k != "prm"})


def test_best_of_n_separation_is_each_criterions_auc_for_passing_over_all_samples():
    choices = [  # the PRM ranks both passing samples below every failing one; one sample has no log-probability
        {"task_id": "a", "logprob": [-0.1, -0.9, None], "prm": [0.1, 0.8, 0.5], "passed": [True, False, False]},
        {"task_id": "b", "logprob": [-0.5, -0.2], "prm": [0.9, 0.2], "passed": [False, True]},
        {"task_id": "c", "logprob": [-0.15, -0.4], "prm": [0.7, 0.6], "passed": [False, False]},
    ]
    s = separation(choices)
    # logprob: -0.1 beats the 4 failing values, -0.2 all but task c's -0.15 (pooled: 7 of 8 pairs)
    assert s["auc"] == {"logprob": 7 / 8, "prm": 0.0}
    assert (s["samples"], s["passing"], s["mixed_tasks"]) == (7, 2, 2)
    assert separation([{**c, "passed": [False] * len(c["passed"])} for c in choices])["auc"]["logprob"] is None
    assert "prm" not in separation([{k: v for k, v in c.items() if k != "prm"} for c in choices])["auc"]


def test_select_without_a_prm_or_with_one_sample_is_refused(saved_prm):
    with pytest.raises(PperError, match="needs a trained PRM: give --prm DIR"):
        evaluate_best_of_n([], "unused.jsonl", None, None, 3, "prm")
    with pytest.raises(PperError, match="n must be 2 or more"):
        evaluate_best_of_n([], "unused.jsonl", None, None, 1, "logprob")


@pytest.mark.slow
def test_pper_eval_select_prints_the_best_of_n_table(tmp_path, saved_prm):
    done = _eval(tmp_path, "--n", "2", "--select", "prm", "--prm", str(saved_prm), "--max-new-tokens", "16",
                 "--workers", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for row in ("pass@1 (mean of the 2 samples)", "best of 2 by log-probability", "best of 2 by PRM test-prm",
                "best of 2 by oracle", "oracle pass@2"):  # fmt: skip
        assert row in done.stdout
    b = json.loads((tmp_path / "metrics.json").read_text())["best_of_n"]
    assert set(b["chosen_by"]) == {"logprob", "prm", "oracle"} and b["chosen_by"]["prm"]["tasks"] == 2


def test_best_of_n_refuses_a_samples_file_written_with_another_n(tmp_path):
    # `pper eval` writes a greedy evaluation and a best of n to the same OUT/samples.jsonl by default: the tasks the
    # first one sampled once must not be taken as sampled n times
    (task,) = load_tasks("humaneval", limit=1)
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": task.id, "program": task.solutions[0]}) + "\n")
    with Executor(workers=1) as executor, pytest.raises(PperError, match=r"holds 1 samples of task .*, not 3"):
        evaluate_best_of_n([task], path, executor, None, 3, "logprob", show_progress=False)
