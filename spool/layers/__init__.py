"""The model's parts: ``attention`` (lookback/lookahead heads in a frame window, backends in
``attention_backends``), ``backbone`` (the frame encoder), ``context`` (the context frames),
``transformer`` (the temporal stack), ``masks``, ``rotary``, ``pooling``. Import from the
modules; the models are in :mod:`spool.models`.
"""
