"""Why the synthetic demo (``spool demo``) sometimes sits at chance: short training runs on the
demo's token cache, one JSON line each (per-step loss, per-epoch train top-1).

Every run trains the demo's Spool (``spool.demo.synthetic`` settings) with the demo's full
schedule and stops after ``--steps`` steps, so the plateau is seen as the demo sees it.
``--init-seed`` draws the initial weights from another seed than the data order and dropout
(``--seed``), to tell the two apart. ``--set`` overrides TrainConfig fields, ``--model``
SpoolConfig fields, ``--demo`` DemoSettings fields. Since commit 30e8a28 the demo's own init
std is 0.069; the runs before it used 0.02 (now ``--model '{"initializer_range": 0.02}'``).

    python bench/demo_plateau.py CACHE_DIR --seed 0 1 2 --steps 300 --log plateau.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_one(cache: Path, seed: int, init_seed: int | None, steps: int, overrides: dict,
            model: dict, demo: dict, tag: str) -> dict:
    from spool.demo.synthetic import SPOOL, DemoSettings, _models
    from spool.train.builders import build_model, model_config
    from spool.train.config import TrainConfig
    from spool.train.trainer import Trainer

    s = DemoSettings(seed=seed, **demo)
    folder, name, arch, fields = next(m for m in _models(s) if m[1] == SPOOL)
    with tempfile.TemporaryDirectory() as tmp:
        config = dict(out_dir=tmp, train_cache=str(cache / "train"), architecture=arch,
                      model={**fields, **model}, epochs=s.epochs, batch_size=s.batch_size,
                      lr=s.lr, weight_decay=s.weight_decay, seed=seed, num_workers=0,
                      device="cpu", tensorboard=False, quiet=True, log_every=10**9,
                      stop_after_steps=steps, **overrides)
        cfg = TrainConfig(**config)
        trainer = Trainer(cfg)
        if init_seed is not None:  # other initial weights, same data order and dropout
            other = TrainConfig(**{**config, "seed": init_seed})
            fresh = build_model(other, model_config(other), trainer.class_names)
            trainer.model.load_state_dict(fresh.state_dict())
        start = time.perf_counter()
        trainer.fit()
        took = time.perf_counter() - start
        with open(Path(tmp) / "steps.csv") as f:
            rows = list(csv.DictReader(f))
        with open(Path(tmp) / "metrics.csv") as f:
            epochs = list(csv.DictReader(f))
    loss = [round(float(r["loss"]), 4) for r in rows]
    return {"tag": tag, "seed": seed, "init_seed": init_seed, "steps": steps,
            "steps_per_epoch": trainer.steps_per_epoch, "overrides": overrides,
            "model": model, "demo": demo, "loss": loss,
            "grad_norm": [round(float(r["grad_norm"]), 4) for r in rows],
            "epoch_train_top1": [round(float(r["train_top1"]), 4) for r in epochs],
            "left_chance_at": left_chance(loss), "seconds": round(took, 1),
            "load": os.getloadavg()}


def left_chance(loss: list[float], window: int = 25, below: float = 1.2) -> int | None:
    """First step at which the mean loss over the last ``window`` steps is under ``below``
    (chance is ln 4 = 1.386); None if it never is."""
    for i in range(window, len(loss) + 1):
        if sum(loss[i - window:i]) / window < below:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cache", type=Path, help="the demo's cache folder (train/, val/)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--init-seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", default="{}", help="TrainConfig fields (JSON)")
    parser.add_argument("--model", default="{}", help="SpoolConfig fields (JSON)")
    parser.add_argument("--demo", default="{}", help="DemoSettings fields (JSON)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log", type=Path, required=True, help="JSON lines, appended")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for seed in args.seed:
        row = run_one(args.cache, seed, args.init_seed, args.steps, json.loads(args.set),
                      json.loads(args.model), json.loads(args.demo), args.tag)
        with open(args.log, "a") as f:
            f.write(json.dumps(row) + "\n")
        marks = [row["loss"][i] for i in (49, 99, 199) if i < len(row["loss"])]
        print(f"{args.tag} seed {seed}: left chance at step {row['left_chance_at']}, "
              f"loss@50/100/200/last {marks} {row['loss'][-1]}, "
              f"epoch top1 {row['epoch_train_top1']}, {row['seconds']}s", flush=True)


if __name__ == "__main__":
    main()
