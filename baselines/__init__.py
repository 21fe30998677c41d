"""Baseline memory models, one module per family."""
