"""Datasets: labelled videos and their clips, token caches, synthetic data.

Import from the modules: ``spool.data.dataset`` (``VideoClipDataset``, ``read_annotations``),
``spool.data.cache`` (``build_cache``, ``CachedTokenDataset``), ``spool.data.frame_cache``
(``build_frame_cache``, ``FrameTokenDataset``, ``VideoFrameDataset``),
``spool.data.segmentation`` (``SegmentationSample``, segments CSVs), ``spool.data.synthetic``
and ``spool.data.synthetic_segments``.
"""
