"""Metrics and plots for per-frame predictions (temporal action segmentation).

Import from the modules: ``spool.metrics.segmentation`` (``SegmentationMetrics``,
``segmentation_scores``, ``frame_accuracy``, ``edit_score``, ``f1_counts``: as MS-TCN's
``eval.py``) and ``spool.metrics.ribbons`` (``plot_ribbons``).
"""
