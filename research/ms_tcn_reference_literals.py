"""Writes tests/test_segmentation_metrics_reference.py: expected values computed by MS-TCN's
eval.py, the reference the test compares Spool's metrics with.

    python research/ms_tcn_reference_literals.py EVAL_PY \
        > tests/test_segmentation_metrics_reference.py

EVAL_PY: eval.py of github.com/yabufarha/ms-tcn at commit
33ed91c0c7576650a2367efc602553af4c5295b1, unchanged. Its functions before ``main`` are run
as they are (``main`` is Python 2, and its aggregation is redone below); numpy >= 1.24 lacks
``np.float``, which is put back for them.
"""
from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import numpy as np

np.float = np.float64  # eval.py predates its removal (numpy 1.24)
ref = types.ModuleType("ms_tcn_eval")
_source = Path(sys.argv[1]).read_text()
exec(compile(_source[:_source.index("def main(")], sys.argv[1], "exec"), ref.__dict__)

COMMIT = "33ed91c0c7576650a2367efc602553af4c5295b1"
OVERLAPS = (0.1, 0.25, 0.5)
BG = "."  # one character per frame; "." is the background class


def runs(rng, T, classes, mean_len, bg_frac):
    out = ""
    while len(out) < T:
        n = int(rng.geometric(1.0 / mean_len))
        out += (BG if rng.random() < bg_frac else "abcdefgh"[rng.integers(classes)]) * n
    return out[:T]


def perturb(rng, t, classes, kind):
    T = len(t)
    if kind == "flips":  # many tiny segments
        p = list(t)
        for i in np.flatnonzero(rng.random(T) < 0.2):
            p[i] = "abcdefgh"[rng.integers(classes)]
        return "".join(p)
    if kind == "shift":
        s = int(rng.integers(1, 4))
        return t[-s:] + t[:-s]
    if kind == "random":
        return runs(rng, T, classes, float(rng.choice([2, 6, 20])), 0.2)
    if kind == "bg":
        return "".join(BG if rng.random() < 0.15 else c for c in t)
    raise ValueError(kind)


HAND = [  # (pred, target)
    ("a", "a"),                     # one frame
    ("b", "a"),
    ("aaaa", "aaaa"),               # a single segment, all one class
    ("aaaaaaaa", "aaaabbbb"),       # IoU exactly 0.5
    ("aaaa", "abbb"),               # IoU exactly 0.25
    ("aaaaaaaaaa", "abbbbbbbbb"),   # IoU exactly 0.1
    ("aaaaaa", "aabbaa"),           # two true segments with the same IoU: the first is taken
    ("aabbbab", "bbbabbb"),         # a tie decides the next match: the first one is taken
    ("aaaabbaaaa", "aaaaaaaaaa"),   # over-segmentation: the third piece's match is taken
    ("abababababababab", "aaaaaaaabbbbbbbb"),  # a segment per frame
    (".aaaaaa.", "..aa.aa."),       # background splits a class into two segments
    ("........", "..aaa.bb"),       # nothing predicted
    ("aa.", "a.."),                 # background at the end
    ("aaaaaaaaab", "aaaaaaaaab"),   # the last frame is a segment of its own
]


def main():
    rng = np.random.default_rng(2024)
    cases = list(HAND)
    kinds = ["flips", "shift", "random", "bg"]
    for i in range(24):
        T = int(rng.integers(5, 81))
        classes = int(rng.integers(2, 6))
        t = runs(rng, T, classes, float(rng.choice([3, 8, 25])), float(rng.choice([0, 0.3])))
        if all(c == BG for c in t):
            t = "a" + t[1:]
        cases.append((perturb(rng, t, classes, kinds[i % 4]), t))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN, no 0/0 in these cases
        for bg in ([BG], []):
            for p, t in cases:
                assert len(p) == len(t)
                edit = float(ref.edit_score(list(p), list(t), True, bg))
                counts = tuple(tuple(int(x) for x in ref.f_score(list(p), list(t), k, bg))
                               for k in OVERLAPS)
                rows.append((p, t, bool(bg), edit, counts))
        # the datasets: all cases, bg_class ["."] and none; eval.py's main()
        datasets = {}
        for bg in ([BG], []):
            tp, fp, fn = np.zeros(3), np.zeros(3), np.zeros(3)
            correct = total = 0
            edit = 0.0
            for p, t in cases:
                correct += sum(a == b for a, b in zip(p, t, strict=True))
                total += len(t)
                edit += ref.edit_score(list(p), list(t), True, bg)
                for s, k in enumerate(OVERLAPS):
                    a, b, c = ref.f_score(list(p), list(t), k, bg)
                    tp[s] += a
                    fp[s] += b
                    fn[s] += c
            res = {"accuracy": 100 * float(correct) / total, "edit": float(edit) / len(cases)}
            for s, k in enumerate(OVERLAPS):
                prec, rec = tp[s] / float(tp[s] + fp[s]), tp[s] / float(tp[s] + fn[s])
                res[f"f1@{round(k * 100)}"] = float(np.nan_to_num(2 * prec * rec / (prec + rec))
                                                    * 100)
            datasets[bool(bg)] = res

    print(f'''"""Spool's segmentation metrics against MS-TCN's own eval.py, on fixed cases.

The expected values below were computed by the functions of ``eval.py`` in
github.com/yabufarha/ms-tcn at commit {COMMIT}
(``get_labels_start_end_time``, ``levenstein``, ``edit_score``, ``f_score``, and ``main``'s
aggregation: frames micro-averaged, edit averaged over videos, TP/FP/FN summed over videos),
with ``np.float`` read as ``np.float64``; they are literals, so the test needs neither the
network nor that repository. Generator: research/ms_tcn_reference_literals.py (seeded,
numpy.random.default_rng(2024)).

One character per frame; "." is the background class (MS-TCN's ``bg_class``). Each case is
scored with ``bg_class=["."]`` and with no background class. Left out, because eval.py has no
value there: a video with no segment in either sequence (eval.py: edit 0/0 = NaN; Spool: 100),
a true sequence without a segment beside a predicted one (eval.py: ``argmax`` of an empty
array raises; Spool: false positives) and an empty video (eval.py: IndexError); see
test_where_eval_py_has_no_value.
"""

from __future__ import annotations

import numpy as np
import pytest

from spool.metrics.segmentation import edit_score, f1_counts, segmentation_scores

OVERLAPS = (0.1, 0.25, 0.5)

# (pred, target, "." is background, edit, ((TP, FP, FN) at 0.1, 0.25, 0.5)) from eval.py
CASES = [''')
    for p, t, bg, edit, counts in rows:
        line = f"    ({p!r}, {t!r}, {bg}, {edit!r}, {counts}),"
        if len(line) <= 100:
            print(line)
        else:
            print(f"    ({p!r},\n     {t!r},\n     {bg}, {edit!r}, {counts}),")
    print("]")
    print()
    print("# eval.py's main() over all the cases above (one dataset per background setting)")
    print("DATASETS = {")
    for bg, res in datasets.items():
        print(f"    {bg}: {{")
        for k, v in res.items():
            print(f"        {k!r}: {float(v)!r},")
        print("    },")
    print("}")
    print('''

def _encodings(p: str, t: str, bg: bool):
    """The characters as labels (as eval.py reads them), and as class indices with the
    background given by its index (as ``spool eval`` calls the metrics)."""
    yield list(p), list(t), ["."] if bg else []
    index = {".": 0, **{c: i + 1 for i, c in enumerate("abcdefgh")}}
    yield (np.array([index[c] for c in p]), np.array([index[c] for c in t]),
           [0] if bg else [])


@pytest.mark.parametrize("pred, target, bg, edit, counts", CASES)
def test_video_scores_match_eval_py(pred, target, bg, edit, counts) -> None:
    for p, t, background in _encodings(pred, target, bg):
        assert edit_score(p, t, background=background) == pytest.approx(edit, abs=1e-9)
        for k, expected in zip(OVERLAPS, counts, strict=True):
            assert f1_counts(p, t, k, background=background) == expected


@pytest.mark.parametrize("bg", [True, False])
def test_dataset_scores_match_eval_py(bg) -> None:
    for enc in range(2):
        pairs = [list(_encodings(p, t, bg))[enc] for p, t, b, _, _ in CASES if b == bg]
        background = pairs[0][2]
        scores = segmentation_scores([p for p, _, _ in pairs], [t for _, t, _ in pairs],
                                     background=background)
        for key, value in DATASETS[bg].items():
            assert scores[key] == pytest.approx(value, abs=1e-9), key


def test_where_eval_py_has_no_value() -> None:
    """Spool's documented choices where eval.py gives NaN or raises."""
    assert edit_score(list("...."), list("...."), background=["."]) == 100.0  # eval.py: NaN
    assert f1_counts(list("aa.."), list("...."), 0.5, background=["."]) == (0, 1, 0)  # raises
    assert edit_score([], []) == 100.0 and f1_counts([], [], 0.5) == (0, 0, 0)  # IndexError
''')


if __name__ == "__main__":
    main()
