"""Line labels by binary search: the first bad line of a monotone probe, within the probe budget, and of a real
program whose bug is known, probed with the reference completer in the sandbox."""

import math

import pytest

from pper.execution import Executor
from pper.prm.completers import reference_probe, shared_lines
from pper.prm.search import contradictions, first_bad_line, max_probes
from pper.source import source_lines
from pper.tasks import load_tasks


@pytest.mark.parametrize("m", [1, 2, 3, 7, 8, 9, 20])
def test_every_first_bad_line_is_found_within_the_budget(m):
    for bad in range(1, m + 2):  # m + 1: every line good
        calls = []

        def completable(j, bad=bad, calls=calls):
            calls.append(j)
            return j < bad

        search = first_bad_line(m, completable)
        assert search.first_bad == bad
        assert search.labels == [1] * (bad - 1) + [0] * (m - bad + 1)
        assert len(calls) == len(search.probes) <= 1 + math.ceil(math.log2(m)) == max_probes(m)
        assert all(result == (j < bad) for j, result in search.probes)


def test_known_lines_and_passing_programs_need_fewer_probes():
    assert first_bad_line(5, lambda j: pytest.fail("no probe"), passes=True).labels == [1] * 5
    assert first_bad_line(5, lambda j: pytest.fail("no probe"), known=5).first_bad == 6
    search = first_bad_line(16, lambda j: j < 14, known=12)
    assert search.first_bad == 14 and len(search.probes) <= max_probes(16, 12) == 3


def test_the_first_bad_line_of_a_program_with_a_known_bug():
    # HumanEval/10 (make_palindrome): a 20-line reference; its body's middle statement becomes a raise
    task = load_tasks("humaneval", limit=11)[10]
    lines = task.solutions[0].splitlines()
    body = [i for i in range(len(task.prompt.splitlines()), len(lines)) if lines[i].strip()]
    k = body[len(body) // 2]  # 0-based
    indent = lines[k][: len(lines[k]) - len(lines[k].lstrip())]
    buggy = lines[:k] + [indent + "raise ValueError('bug')"] + lines[k + 1 :]
    program = "\n".join(buggy) + "\n"
    with Executor(workers=1) as executor:
        assert not executor.run(task, program).all_passed
        search = first_bad_line(len(buggy), reference_probe(task, program, executor))
    assert search.first_bad == k + 1  # the changed line, 1-based
    assert 1 < k + 1 < len(buggy)  # in the middle: the search had to bisect
    assert len(search.probes) <= 1 + math.ceil(math.log2(len(buggy)))
    assert shared_lines(buggy, source_lines(task.solutions[0])) == k


def test_roc_auc_is_the_mann_whitney_probability():
    from pper.prm.metrics import position_scores, roc_auc

    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5  # ties count one half
    # pairs (good, bad): (0.8 > 0.3), (0.8 > 0.5), (0.4 > 0.3), (0.4 < 0.5): 3 of 4
    assert roc_auc([0.8, 0.4, 0.3, 0.5], [1, 1, 0, 0]) == 0.75
    assert roc_auc([0.3, 0.4], [1, 1]) is None
    assert position_scores(4) == [1.0, 0.75, 0.5, 0.25]


def test_prm_scores_raise_the_priority_of_failing_programs_with_good_lines(tmp_path):
    from pper.buffer import Execution, NewProgram, ReplayBuffer, ReplayConfig
    from pper.buffer.replay import Replay
    from pper.errors import PperError
    from pper.execution.results import ProgramResult, TestResult

    task = load_tasks("humaneval", limit=1)[0]
    with ReplayBuffer(tmp_path / "buffer.sqlite") as buffer:
        buffer.add_tasks([task])
        ids = buffer.add_programs([NewProgram(task.id, f"x = {i}\ny = {i}\n", -1.0, 4, "m") for i in range(3)])
        failed = ProgramResult((TestResult("wrong_answer", "no"),))
        buffer.add_executions([Execution(i, failed) for i in ids])
        config = ReplayConfig(priority="proportional", alpha=0.0, prm_weight=1.0)
        with pytest.raises(PperError, match="no scores of any PRM"):
            Replay.from_buffer(buffer, config)
        buffer.add_prm_scores("prm@1", {ids[0]: {1: 0.9, 2: 0.7}, ids[1]: {1: 0.1, 2: 0.3}})  # ids[2] not scored
        replay = Replay.from_buffer(buffer, config, seed=0)
        assert replay.p2value.tolist() == pytest.approx([0.8, 0.2, 0.0])  # the unscored one keeps its pass rate
        assert replay.probability.tolist() == pytest.approx([0.8, 0.2, 0.0])
        assert buffer.latest_prm() == "prm@1" and buffer.prm_ids() == {"prm@1"}
        with pytest.raises(PperError, match="no scores of PRM 'other'"):
            Replay.from_buffer(buffer, config.model_copy(update={"prm": "other"}))
        plain = Replay.from_buffer(buffer, ReplayConfig(priority="rank", alpha=0.5), seed=0)
        assert plain.table.prm_score is None  # without prm_weight the table and the values are the paper's


def test_a_program_is_probed_on_the_lines_python_numbers():
    # "\u2028" in a string and "\x0c" in a comment break no line for Python (they do for str.splitlines): a probe's
    # prefix must keep them inside their line, or the completed program would not even parse
    from pper.tasks import AssertTests, Task

    reference = 'def f():\n    s = "a\u2028b"  # \x0c\n    return s\n'
    task = Task(
        id="t/sep", prompt="f", tests=AssertTests(asserts=('assert f() == "a\u2028b"',)), solutions=(reference,)
    )
    program = reference.replace("return s", "return s + 'x'").replace("\n", "\r\n")
    with Executor(workers=1) as executor:
        search = first_bad_line(3, reference_probe(task, program, executor))
    assert search.first_bad == 3


def test_indentation_is_part_of_a_line_when_comparing_with_a_reference():
    from pper.prm.completers import normalised

    assert normalised("    return  x ") == "    return x" and normalised("\treturn x") == "\treturn x"
    assert shared_lines(["def f():", "        return None"], ["def f():", "    return None"]) == 1
    # spaces inside a string are its value: a line that changes them is another line, never shared for free
    assert normalised("    sep = '  '") != normalised("    sep = ' '")
    assert shared_lines(["def f():", "\treturn None"], ["def f():", "    return None"]) == 1  # tabs are not spaces


def test_a_completion_keeps_a_prefix_that_ends_on_a_blank_line():
    from pper.prm.completers import keeps_prefix

    prefix = ["def f():", "    x = 1", ""]  # the probe's line 3 is blank
    assert keeps_prefix("def f():\n    x = 1\n\n    return x\n", prefix)
    assert not keeps_prefix("def f():\n    x = 1\n    return x\n", prefix)  # the blank line rewritten
    assert not keeps_prefix("def f():\n    x = 2\n\n    return x\n", prefix)
    assert keeps_prefix("def f():\n    x = 1\n", prefix[:2]) and not keeps_prefix("def f():\n", prefix[:2])


def test_line_input_maps_each_line_to_its_last_token():
    from pper.generation import load_model
    from pper.prm.label import model_prefix
    from pper.prm.model import line_input
    from pper.prm.train import split_tasks

    _, tokenizer, _ = load_model("default")
    task = load_tasks("humaneval", limit=1)[0]
    program = task.solutions[0]
    item = line_input(task, program, tokenizer)
    lines = program.splitlines()
    given = len(task.prompt.rstrip().splitlines())
    assert len(item.positions) == len(lines) and item.positions[:given] == (None,) * given  # the prompt: given
    offsets = tokenizer(program, return_offsets_mapping=True).offset_mapping
    # the model's own tokens start after the given prompt (the line log-probability baseline averages from there)
    assert offsets[item.start - 1][0] < len(task.prompt.rstrip()) <= offsets[item.start][0]
    at = 0
    for i, line in enumerate(lines):
        end = at + len(line)
        if i >= given and line.strip():  # the token holding the line's last character
            begin, finish = offsets[item.positions[i]]
            assert begin < end <= finish or (begin < end and finish >= end - 1), (i, line)
            assert begin >= at or i == 0
        at = end + 1
    cut = line_input(task, program, tokenizer, max_length=20)  # the start goes first: early lines unscored
    assert len(cut.ids) == 20 and cut.positions[-1] is not None and cut.positions[given] is None
    # the model completer's prefix: after the prompt for a completion task, the lines themselves otherwise
    assert model_prefix(task, lines[: given + 2]) == "\n" + "\n".join(lines[given : given + 2])
    assert model_prefix(task, ["def other():"]) is None
    train, val = split_tasks([f"t{i}" for i in range(8)], 0.25, seed=0)
    assert len(val) == 2 and sorted(train + val) == sorted(f"t{i}" for i in range(8))
    assert split_tasks([f"t{i}" for i in range(8)], 0.25, seed=0) == (train, val)  # seeded


def test_a_passing_completion_that_kept_lines_a_false_probe_had_contradicts_it():
    # c(8) false, yet the passing completion of the prefix 4 kept the first 9 lines: c(8) and c(6) contradicted
    probes = ((8, False), (4, True), (6, False), (5, True))
    assert contradictions(probes, {4: 9, 5: 5}) == ((8, 4), (6, 4))
    assert contradictions(probes, {4: 4, 5: 5}) == ()  # kept only its own prefix: no evidence past it
    assert contradictions(probes, {5: 6}) == ((6, 5),)
    # the bisection's own probes never contradict: each true one lies below each false one
    for m in range(1, 40):
        for b in range(1, m + 2):
            s = first_bad_line(m, lambda j, b=b: j < b)
            assert contradictions(s.probes, {j: j for j, ok in s.probes if ok}) == ()


def test_every_reference_that_shares_the_prefix_is_tried():
    from pper.tasks import AssertTests, Task

    wrong = "def f(x):\n    y = x\n    return y + 1\n"  # shares the first two lines, fails
    right = "def f(x):\n    y = x\n    return y * 2\n"
    task = Task(id="t/two", prompt="f", tests=AssertTests(("assert f(2) == 4",)), solutions=(wrong, right))
    program = "def f(x):\n    y = x\n    return 0\n"
    with Executor(workers=1, calibrate=False) as executor:
        probe = reference_probe(task, program, executor)
        assert probe(2) and probe(1)  # the second reference completes what the first does not
        assert first_bad_line(3, probe).first_bad == 3


def test_an_empty_pass_rate_filter_is_refused():
    from pper.errors import PperError
    from pper.prm.label import Filter

    with pytest.raises(PperError, match="the pass-rate filter \\[0.8, 0.2\\] is empty"):
        Filter(min_pass_rate=0.8, max_pass_rate=0.2)
    assert Filter(min_pass_rate=0.5, max_pass_rate=0.5).max_pass_rate == 0.5
