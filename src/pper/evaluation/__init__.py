"""Evaluation phase: pass rate, strict accuracy and pass@k of a model on held-out tasks; reports."""

from .evaluate import evaluate, metrics, results_path
from .metrics import Scored, grouped, pass_at_k, summarize

__all__ = ["evaluate", "metrics", "results_path", "Scored", "grouped", "pass_at_k", "summarize"]
