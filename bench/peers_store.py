"""The results of ``bench/peers.py`` kept in a workdir, so a run can be split into parts.

Each part (``--models``, ``--frames``) adds its measurements to ``<workdir>/results.json``
and rewrites the report from everything stored, so parts run at different times combine into
one table, as ``bench/long_video.py`` does. The file is written after every child process, so a
part that is stopped keeps what it measured. In memory the results are one dict (``res``)
whose per-measurement tables are keyed by ``(model, T)``; on disk those keys are ``model@T``.
"""

from __future__ import annotations

import json
from pathlib import Path

PAIR_KEYED = ("rows", "skipped", "loads", "pool")  # (model, T) -> ...
T_KEYED = ("backbone", "child_peaks", "flop_checks", "runs", "flops")  # T -> ...


def new_results(tiny: bool) -> dict:
    return {"tiny": tiny, "ts": [], "runs": {}, "rows": {}, "skipped": {}, "flops": {},
            "useful": {}, "peaks": [], "flop_checks": {}, "loads": {}, "pool": {},
            "backbone": {}, "child_peaks": {}, "profiles": [], "parts": []}


def store_path(workdir: Path) -> Path:
    return Path(workdir) / "results.json"


def load(workdir: Path | None, tiny: bool) -> dict:
    """The stored results, or new ones. Tiny (smoke-test) and real results never mix."""
    path = store_path(workdir) if workdir else None
    if path is None or not path.is_file():
        return new_results(tiny)
    raw = json.loads(path.read_text())
    if raw.get("tiny", False) != tiny:
        raise SystemExit(f"{path} holds {'tiny' if raw.get('tiny') else 'full-size'} results; "
                         "use another --workdir (or delete it) for this run")
    res = new_results(tiny)
    res.update(raw)
    for name in PAIR_KEYED:
        res[name] = {_pair(k): v for k, v in raw.get(name, {}).items()}
    for name in T_KEYED:
        res[name] = {int(k): v for k, v in raw.get(name, {}).items()}
    if "end_to_end" in raw:
        res["end_to_end"] = tuple(raw["end_to_end"])
    return res


def save(workdir: Path | None, res: dict) -> None:
    if workdir is None:
        return
    path = store_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_json(res), indent=1, default=str))
    tmp.replace(path)  # a part stopped mid-write leaves the previous file whole


def to_json(res: dict) -> dict:
    out = dict(res)
    for name in PAIR_KEYED:
        out[name] = {f"{k}@{T}": v for (k, T), v in res.get(name, {}).items()}
    out.pop("useful", None)  # by hand, recomputed
    return out


def _pair(key: str) -> tuple[str, int]:
    model, T = key.rsplit("@", 1)
    return model, int(T)


# Why a (model, T) was not measured. A failed allocation in the child is kept (a later part
# would fail the same way, unless --again); estimates over a cap and time-cap decisions are
# made again by every part that asks for that (model, T), since caps may differ per part.
def is_measured_oom(reason: str) -> bool:
    return reason.startswith("OOM (allocation failed")


def forget(res: dict, models: list[str], ts: list[int], again: bool) -> None:
    """Before a part: drop what it will decide again for its ``models`` x ``ts``; with
    ``again`` also their measurements (they are measured again)."""
    for key in [k for k in res["skipped"] if _covers(k, models, ts)]:
        if again or not is_measured_oom(res["skipped"][key]):
            del res["skipped"][key]
    if again:
        for key in [k for k in res["rows"] if _covers(k, models, ts)]:
            del res["rows"][key]


def _covers(key: tuple[str, int], models: list[str], ts: list[int]) -> bool:
    model, T = key
    return T in ts and (model in models or model.removesuffix("_cached") in models)


def first_stop(res: dict, model: str) -> tuple[int, str] | None:
    """The smallest T at which ``model`` stopped in the stored results (a measured OOM, or an
    estimate over the memory or time cap), with the short reason."""
    stops = [(T, "OOM" if "OOM" in why else "over the time cap")
             for (k, T), why in res["skipped"].items()
             if k == model and not why.startswith("not run")
             and ("OOM" in why or "time cap" in why)]
    return min(stops) if stops else None
