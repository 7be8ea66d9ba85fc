"""Metrics and plots for per-frame predictions (temporal action segmentation)."""
