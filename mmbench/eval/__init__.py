"""The shared evaluator: all-rank top-K metrics for model scores or external ranked lists."""
from mmbench.eval.evaluator import EvalResult, evaluate, evaluate_topk

__all__ = ["evaluate", "EvalResult", "evaluate_topk"]
