"""Evaluation phase: pass rate, strict accuracy and pass@k of a model on held-out tasks, best of n; reports."""

from .best_of_n import evaluate_best_of_n
from .evaluate import evaluate, metrics, results_path
from .metrics import Scored, grouped, pass_at_k, summarize

__all__ = ["evaluate", "evaluate_best_of_n", "metrics", "results_path", "Scored", "grouped", "pass_at_k", "summarize"]
