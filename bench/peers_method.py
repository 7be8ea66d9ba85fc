"""The method text of ``bench/peers.py``'s report (``{runs}`` etc. are filled in by
``peers_report.render``)."""

METHOD = """\
- **Models** (random weights, base-size configs, 224x224, batch 1, fp32, `torch.no_grad`,
  eval mode): Spool = DINOv2-base-sized backbone (hidden 768, 12 layers, patch 14, 257
  tokens/frame) + 12 temporal blocks (12 heads: 6 lookback, 6 lookahead), `blocked` attention,
  w = `local_frame_range`, k = `token_pooling` (the 16x16 patch grid average-pooled k x k
  after the backbone, the class token kept: the temporal stack sees L = 257, 65 and 17 tokens
  per frame at k = 1, 2, 4); *cached tokens* = the temporal stack alone on the (pooled)
  backbone tokens (`forward_tokens`); dense-masked Spool = w=16, k=1 with
  `attn_implementation="reference"` (the full `(T+2)L x (T+2)L` mask; its cost does not depend
  on w). TimeSformer = HF `TimesformerModel` base (divided space-time, patch 16), one model
  per T (its time embedding is sized by `num_frames`); VideoMAE = HF `VideoMAEModel` base
  (tubelet 2, patch 16, `num_frames=T`, SDPA attention). Spool takes uint8
  `[1, T, 224, 224, 3]` and does its own normalisation; the HF models take ready
  `pixel_values`.
- **Latency**: median of the timed runs after a warm-up forward (at the same T for T <= 8,
  at T = 4 above that: a warm-up at T = 128 would cost minutes); runs per T: {runs}
  (the dense-masked Spool: one run for T >= 32).
  frames/s = T / latency, clips/s = 1 / latency.
  One child process per (model group, T). In the Spool child each iteration runs the backbone
  once on the video (the frame encoder: what `encode_frames` runs), then, per variant, its
  token pooling (what a `token_pooling=k` frame encoder applies to each chunk of frames) and
  its temporal stack (`forward_tokens`) on the result: the backbone is the same frozen network
  for every variant, so it runs once. A variant's full-model time is backbone + its pooling +
  its stack from the same iteration (checked below against `model(video)` of Spool w=4, k=1, 2
  and 4 built as ordinary models with the same weights). The *cached tokens* rows are the
  stack times alone; pooling is part of the frame encoder and is shown separately.
- **Peak memory**: resident set size (RSS) of the child process, per phase. Before a phase the
  freed heap is returned to the OS (`malloc_trim`), the RSS is read and the kernel's RSS
  high-water mark is reset (`echo 5 > /proc/self/clear_refs`, which also resets `getrusage`'s
  `ru_maxrss`); after it the high-water mark (`VmHWM`) is read. Peak = high-water mark - RSS
  before, i.e. the memory the forward needs on top of the weights and the input (measured on
  the first timed run). For full Spool it is the larger of the backbone phase and the
  temporal phase with the variant's own (pooled) tokens resident; the backbone phase is
  measured without pooling, an upper bound for a pooled model (which pools each chunk of 32
  frames before keeping it). Before each child the peak is estimated; a (model, T) whose
  estimate exceeds min({cap} GiB, available - 1 GiB) is not run and reported as OOM with the
  estimate, and each child's address space is capped so an allocation past that fails in the
  child (reported as OOM) instead of invoking the OOM killer. A model that ran out of memory
  at some T is not run at larger T.
- **FLOPs**: `torch.utils.flop_counter.FlopCounterMode` over one forward on the meta device
  (same shapes, no memory or time, so T's that do not fit are counted too). Its CPU SDPA op
  (`_scaled_dot_product_flash_attention_for_cpu`) has no formula in torch {torch}, which would
  count attention as 0 on CPU; this script registers the same formula as the CUDA flash op.
  Spool's attention-backend registry declares real device types only, so while counting the
  script adds `meta` to its `blocked` and `reference` backends (same code, shapes only).
  Pooling (`avg_pool2d`) has no formula and counts 0 (about one add per backbone token).
  Counted on real CPU tensors for T <= 8 as a check (below). Counted FLOPs of `blocked`
  attention include the masked-out entries inside each block; *useful* FLOPs are by hand:
  linear layers 24 D^2 per token per layer + attention 4 L^2 (D/H) per allowed (query frame,
  key frame) pair per head per layer (about 4 (w+2) L D per token per layer), with L the
  pooled tokens per frame.
- **Matmul peak**: best of {peak_repeats} fp32 `torch.mm` of 4096 x 4096 matrices, measured at
  the start, in each Spool child right before its timed runs, and at the end; the best of all
  is the peak (the machine is shared, so this gives the lowest percentage).
- **Allocator**: every child calls `spool.runtime.tune_cpu_allocator()` first, as the `spool`
  CLI does (glibc keeps large freed blocks instead of mapping fresh pages per tensor); it
  applies to all models alike, the peers and the matmul peak included.
- **Where a model stops**: at the first T where (a) its memory estimate is over the cap or
  an allocation fails under it (*OOM*), or (b) one forward is estimated over the time cap (*time
  cap*, seconds per measurement; a Spool variant's forward is backbone + its stack; estimate =
  counted FLOPs / the FLOP rate the model measured at its largest smaller T; below the cap the
  runs are cut to fit) or its child is killed past it; it is not run at larger T. Neither peer has
  a position-embedding limit here: each is built for its T (TimeSformer's time embedding and
  VideoMAE's sinusoidal table are sized by `num_frames`). The released checkpoints would have
  one: VideoMAE-base's fixed table holds 16 frames (8 tubelets), TimeSformer-base
  interpolates its 8 time embeddings (HF `TimesformerEmbeddings`).
- **Parts**: results accumulate in a workdir; a run measures what is not stored yet, so the
  benchmark can be run in parts (`--models`, `--frames`) that combine into these tables (the
  commands above, in order). Times from different parts come from different processes at
  different times; the stack/backbone ratios use the backbone time of the same child.
"""
