"""report.md's tables: well-formed markdown, every logged phase a column, steps redone after a resume counted once."""

from __future__ import annotations

import re
from pathlib import Path

from pper.report import PHASES, _turn_lines, metrics_table

SRC = Path(__file__).resolve().parent.parent / "src" / "pper"


def _cells(line: str) -> int:
    return line.strip().strip("|").count("|") + 1


def test_the_metrics_table_has_as_many_cells_in_every_row_as_in_its_header():
    for metrics in ([], [{"round": 0, "overall": {"tasks": 2, "pass_rate": 0.5, "strict_accuracy": 0.5}}],
                    [{"round": 1, "overall": {"tasks": 2, "pass_rate": 0.5, "strict_accuracy": 0.0, "pass@1": 0.0,
                                              "pass@10": 0.5, "pass@2": 0.25}}]):  # fmt: skip
        lines = metrics_table(metrics)
        assert len({_cells(line) for line in lines}) == 1, lines
    assert lines[0].endswith("| pass@1 | pass@2 | pass@10 |")  # in k's order, not the string's


def test_every_phase_the_pipeline_logs_is_a_column_of_the_time_table():
    logged = set(re.findall(r'events\.phase\("(\w+)"', (SRC / "pipeline.py").read_text()))
    assert logged and logged <= set(PHASES), logged - set(PHASES)


def test_a_step_logged_again_after_a_resume_counts_once_in_the_repair_lines():
    stats = {"turns_by_round": {1: {1: {"programs": 6, "passing": 0}, 2: {"programs": 3, "passing": 1}}}}
    events = [
        {"event": "step", "round": 1, "step": 1, "repaired": 2},
        {"event": "step", "round": 1, "step": 2, "repaired": 1},
        {"event": "step", "round": 1, "step": 2, "repaired": 1},  # step 2 again, after a kill -9
    ]
    text = "\n".join(_turn_lines(stats, events))
    assert "Round 1: 3 programs replayed in its 2 steps came from repair turns." in text
