"""Evaluation: `diff3r eval` and the one scoring path it shares with training.

  views.py    the one path: predict θ0/Λ from context views, optionally TTO at several budgets,
              render the target views, PSNR/SSIM (also used by training-time evaluation)
  command.py  evaluate_main (the `diff3r eval` engine: fixed test views of an RE10K root, every method)
  report.py   summarize; the presenters print_summary, markdown_table and the progress bar
"""

from diff3r_cli.evaluate.command import depth_range_for, evaluate_main, plan_runs
from diff3r_cli.evaluate.report import markdown_table, print_summary, summarize
from diff3r_cli.evaluate.views import EvalViews, ViewScores, evaluate_views, score_runs

__all__ = ["evaluate_main", "plan_runs", "depth_range_for", "summarize", "print_summary", "markdown_table",
           "EvalViews", "ViewScores", "evaluate_views", "score_runs"]
