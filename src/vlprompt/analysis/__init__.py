"""Analyses of trained runs (``vlprompt analyze ...``)."""

from .channels import analyze_runs, channel_importance, collect_run

__all__ = ["analyze_runs", "channel_importance", "collect_run"]
