"""Human spot-checks of AI labels (`rlaif review`): a blind, stratified sample served on 127.0.0.1, verdicts
appended to human_labels.jsonl, and the agreement between people and the judge (and each panel member)."""

from .session import ReviewSession, agreement_stats, load_label_rows, resolve_labels

__all__ = ["ReviewSession", "agreement_stats", "load_label_rows", "resolve_labels"]
