"""Evaluation: metrics, uncertainty maps and scores, output writers, savers, diagnostics, the baseline's loss."""
