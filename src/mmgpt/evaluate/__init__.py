"""Evaluation: metrics and runners. ``evaluate_world`` scores a model on a generated world's held-out scenes."""
