"""Controlled experiments on the embedded default that reproduce the paper's findings in miniature."""
