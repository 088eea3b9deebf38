from pper.tasks import AssertTests, load_tasks
from reference_runner import assert_results


def test_loads_all_164_tasks_from_the_bundled_file():
    tasks = load_tasks("humaneval")
    assert len(tasks) == 164
    assert [t.id for t in tasks[:2]] == ["HumanEval/0", "HumanEval/1"]
    t = tasks[0]
    assert t.entry_point == "has_close_elements"
    assert t.prompt_style == "completion" and t.split == "test"
    assert isinstance(t.tests, AssertTests) and t.num_tests == 7
    assert "candidate = has_close_elements" in t.tests.setup
    assert "def check(candidate)" in t.metadata["check"]


def test_asserting_loops_keep_their_context_and_assert_true_lines_are_dropped():
    tasks = {t.id: t for t in load_tasks("humaneval")}
    poly = tasks["HumanEval/32"].tests
    assert len(poly) == 1 and poly.asserts[0].startswith("import math")  # the whole seeded loop is one test
    assert not any(a.strip().startswith("assert True") for t in tasks.values() for a in t.tests.asserts)


def test_split_tests_agree_with_the_whole_check_function():
    """Canonical solutions pass every split test; a stub returning None fails at least one, on all 164."""
    tasks = load_tasks("humaneval")
    jobs = [(t.solutions[0], t.tests) for t in tasks] + [(t.prompt + "    return None\n", t.tests) for t in tasks]
    results = assert_results(jobs)
    assert all(p == n for p, n in results[:164])
    assert all(p < n for p, n in results[164:])


def test_a_local_file_in_the_humaneval_row_format(tmp_path):
    import gzip

    from pper.tasks.humaneval import bundled_path

    with gzip.open(bundled_path(), "rt") as f:
        lines = f.read().splitlines()[:3]
    path = tmp_path / "HumanEval-mini.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert load_tasks(f"humaneval:{path}") == load_tasks("humaneval", limit=3)
