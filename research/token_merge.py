"""Does a learned merge keep more accuracy than average pooling at k = 2? (issue 12)

A prototype of what became ``SpoolConfig.token_merging`` (it now uses that merge,
``spool.layers.pooling.TokenMerging``; same initialisation and cell order, no random draws):
the synthetic demo (``spool demo``) trained on its k = 1 token
cache, with a Qwen2-VL-style patch merger in front of Spool's context frames: the k x k
neighbouring patch tokens concatenated and projected back to D by a Linear initialised to
the mean (so it starts as ``token_pooling=k`` and learns away from it), the class token kept.
It monkeypatches ``Spool`` in this process only.

    MERGE_K=2 SEED=0 python research/token_merge.py /tmp/merge-k2

Environment: MERGE_K (2), SEED (0), PATCH (16: the demo's 4x4 grid), MERGE_WD (0: the merge
weight is left out of weight decay), MODELS (spool; comma-separated run folders of the demo).
"""

import json
import os
import sys
import time
from pathlib import Path

import spool.demo.synthetic as syn
import spool.models.spool as sm
from spool.layers.context import ContextFrames
from spool.layers.pooling import TokenMerging

K = int(os.environ.get("MERGE_K", "2"))
WD = os.environ.get("MERGE_WD", "0") == "1"
PATCH = int(os.environ.get("PATCH", "16"))
MODELS = os.environ.get("MODELS", "spool").split(",")


_init, _forward, _no_decay = sm.Spool.__init__, sm.Spool._temporal_forward, \
    sm.Spool.no_weight_decay
_models = syn._models


def _merged_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    c = self.config
    g = int(round((c.num_spatial_tokens - 1) ** 0.5))
    self.merger = TokenMerging(c.num_spatial_tokens, c.hidden_size, K)
    self.context_frames = ContextFrames(1 + (g // K) ** 2, c.hidden_size, c.initializer_range)


def _merged_forward(self, tokens):
    return _forward(self, self.merger(tokens.to(self.merger.proj.weight.dtype)))


def _merged_no_decay(self):
    return _no_decay(self) if WD else _no_decay(self) | {"merger.proj.weight"}


sm.Spool.__init__ = _merged_init
sm.Spool._temporal_forward = _merged_forward
sm.Spool.no_weight_decay = _merged_no_decay
syn._models = lambda s: [m for m in _models(s) if m[0] in MODELS]

if __name__ == "__main__":  # the token cache's DataLoader workers import this module
    out = Path(sys.argv[1])
    extra = {} if PATCH == 16 else {"backbone": {**syn.DEMO_BACKBONE, "patch_size": PATCH},
                                    "position_scale": (3 * PATCH * PATCH) ** 0.5}
    settings = syn.DemoSettings(seed=int(os.environ.get("SEED", "0")), token_pooling=1, **extra)
    start = time.time()
    results = syn.run_demo(out, settings, jobs=1, threads=2)
    print(json.dumps({name: {"val_top1": r["val_top1"], "train_top1": r["train_top1"]}
                      for name, r in results.items()}), f"{time.time() - start:.0f} s")
