"""Spool's segmentation metrics against MS-TCN's own eval.py, on fixed cases.

The expected values below were computed by the functions of ``eval.py`` in
github.com/yabufarha/ms-tcn at commit 33ed91c0c7576650a2367efc602553af4c5295b1
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
CASES = [
    ('a', 'a', True, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('b', 'a', True, 0.0, ((0, 1, 1), (0, 1, 1), (0, 1, 1))),
    ('aaaa', 'aaaa', True, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('aaaaaaaa', 'aaaabbbb', True, 50.0, ((1, 0, 1), (1, 0, 1), (1, 0, 1))),
    ('aaaa', 'abbb', True, 50.0, ((1, 0, 1), (1, 0, 1), (0, 1, 2))),
    ('aaaaaaaaaa', 'abbbbbbbbb', True, 50.0, ((1, 0, 1), (0, 1, 2), (0, 1, 2))),
    ('aaaaaa', 'aabbaa', True, 33.333333333333336, ((1, 0, 2), (1, 0, 2), (0, 1, 3))),
    ('aabbbab', 'bbbabbb', True, 75.0, ((2, 2, 1), (1, 3, 2), (0, 4, 3))),
    ('aaaabbaaaa', 'aaaaaaaaaa', True, 33.333333333333336, ((1, 2, 0), (1, 2, 0), (0, 3, 1))),
    ('abababababababab', 'aaaaaaaabbbbbbbb', True, 12.5, ((2, 14, 0), (0, 16, 2), (0, 16, 2))),
    ('.aaaaaa.', '..aa.aa.', True, 50.0, ((1, 0, 1), (1, 0, 1), (0, 1, 2))),
    ('........', '..aaa.bb', True, 0.0, ((0, 0, 2), (0, 0, 2), (0, 0, 2))),
    ('aa.', 'a..', True, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('aaaaaaaaab', 'aaaaaaaaab', True, 100.0, ((2, 0, 0), (2, 0, 0), (2, 0, 0))),
    ('ddbadacaabbbbbaaaaabbbb',
     'ddbaaacaabbbbbdaaaabbbb',
     True, 70.0, ((8, 2, 1), (8, 2, 1), (7, 3, 2))),
    ('..dddddddddddddaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa....abbbbbbbba..bbbbb..............',
     'dddddddddddddaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa....abbbbbbbba..bbbbb................',
     True, 100.0, ((4, 2, 2), (4, 2, 2), (3, 3, 3))),
    ('bbbddddddaa.ccc.......bdd...........dddddddddddddddddd',
     'aaaaaaaaaaaaaaaaaaaddddccccccbbbbbbbbbbbbbbbaaaaaaaaaa',
     True, 42.85714285714286, ((1, 6, 4), (0, 7, 5), (0, 7, 5))),
    ('aaaaaaaaaaa.aaa', 'aaaaaaaaaaaaaaa', True, 50.0, ((1, 1, 0), (1, 1, 0), (1, 1, 0))),
    ('bbbbbbbbabbbbbbbbabbbbbaaaabaaaaaabbababbbbbababaaaa',
     'bbbbbbbbabbbbbbbbabbbbbaaaaaaaaaaabbabbbbbbbbbaaaaaa',
     True, 55.55555555555556, ((10, 8, 0), (10, 8, 0), (10, 8, 0))),
    ('cccbbbbbbbbbbbbbbccccccccccc',
     'bbbbbbbbbbbbbbcccccccccccccc',
     True, 66.66666666666667, ((2, 1, 0), (2, 1, 0), (2, 1, 0))),
    ('d...dbddddddddddddddddddcccccc...',
     'ddcaa.....ddddbbcaccccccccdc..bbc',
     True, 41.666666666666664, ((3, 2, 9), (1, 4, 11), (1, 4, 11))),
    ('eeeee.eeeeeeee.ccc',
     'eeeeeeeeeeeeeeeccc',
     True, 66.66666666666667, ((2, 1, 0), (2, 1, 0), (2, 1, 0))),
    ('abaabbbbbbbbbbbbbbbbabbbbbbbabbabbbbbbbbbb',
     'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',
     True, 9.999999999999998, ((1, 9, 0), (1, 9, 0), (0, 10, 1))),
    ('dbbbbbbbbbbddddddddd',
     'bbbbbbbbbbdddddddddd',
     True, 66.66666666666667, ((2, 1, 0), (2, 1, 0), (2, 1, 0))),
    ('ccbbbbbbbb..bbbaaaaaaaaaaaaaaaaccccccaaaaaaaaabbaaaaaacccbbbbbbccccccc',
     'cccccccccccbbbaaaaaaaaaaaaaaccbbbbbbbbbbbbbbbbbbbb..aaaabbbbbbbbbb..aa',
     True, 63.63636363636363, ((6, 5, 2), (4, 7, 4), (3, 8, 5))),
    ('a.a..aa.aa.aaaaaaaaaabbbbbbbbbbbbbbbbb.aa',
     'aaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbaaa',
     True, 42.85714285714286, ((3, 4, 0), (3, 4, 0), (2, 5, 1))),
    ('bdddddddddddddddddddddddddddddddbdddccecccccecccaccacccccccc',
     'ddddddddddddddddddddddddddddddddddddcccccccccccccccccccccccc',
     True, 15.384615384615385, ((2, 11, 0), (2, 11, 0), (1, 12, 1))),
    ('bbbbbbbbbbbbbbbbbbbbbbbbbbbb',
     'bbbbbbbbbbbbbbbbbbbbbbbbbbbb',
     True, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('bbbbbbbbbbbbb', 'a............', True, 0.0, ((0, 1, 1), (0, 1, 1), (0, 1, 1))),
    ('abbbbb.bbbbbb.bb.......................................................',
     'abbbbbbbbbbbbbbb.......................................................',
     True, 50.0, ((2, 2, 0), (2, 2, 0), (1, 3, 1))),
    ('....e..bb', '.......bb', True, 50.0, ((1, 1, 0), (1, 1, 0), (1, 1, 0))),
    ('aaa.....b', '.....baaa', True, 0.0, ((0, 2, 2), (0, 2, 2), (0, 2, 2))),
    ('bbbbbbbbbaaaaaabbbaaa......................',
     'aaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbb',
     True, 50.0, ((1, 3, 1), (0, 4, 2), (0, 4, 2))),
    ('ccc......', 'cccc.....', True, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('daddaddaddbbdbbbcdccca',
     'ddddddddddbbbbbbddcccc',
     True, 28.57142857142857, ((4, 10, 0), (3, 11, 1), (3, 11, 1))),
    ('eaadccccceeeeeeeeaddeaaaadddddbbbbbbbbbbbbbbbbbccccddddddddddddaaabbbbbbee',
     'dccccceeeeeeeeaddeaaaadddddbbbbbbbbbbbbbbbbbccccddddddddddddaaabbbbbbeeeaa',
     True, 81.25, ((8, 8, 7), (6, 10, 9), (2, 14, 13))),
    ('bbbbbbbaaccccccccbaaaaa...ccbbacabbbbbbbaaaaaaacccb.c....babbbbbccc',
     'cc................................................bbbbbbbbbbbbbbbbb',
     True, 10.526315789473683, ((1, 18, 1), (1, 18, 1), (0, 19, 2))),
    ('cccc.ccccc.ccccccccccccccc',
     'cccccccccccccccccccccccccc',
     True, 33.333333333333336, ((1, 2, 0), (1, 2, 0), (1, 2, 0))),
    ('a', 'a', False, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('b', 'a', False, 0.0, ((0, 1, 1), (0, 1, 1), (0, 1, 1))),
    ('aaaa', 'aaaa', False, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('aaaaaaaa', 'aaaabbbb', False, 50.0, ((1, 0, 1), (1, 0, 1), (1, 0, 1))),
    ('aaaa', 'abbb', False, 50.0, ((1, 0, 1), (1, 0, 1), (0, 1, 2))),
    ('aaaaaaaaaa', 'abbbbbbbbb', False, 50.0, ((1, 0, 1), (0, 1, 2), (0, 1, 2))),
    ('aaaaaa', 'aabbaa', False, 33.333333333333336, ((1, 0, 2), (1, 0, 2), (0, 1, 3))),
    ('aabbbab', 'bbbabbb', False, 75.0, ((2, 2, 1), (1, 3, 2), (0, 4, 3))),
    ('aaaabbaaaa', 'aaaaaaaaaa', False, 33.333333333333336, ((1, 2, 0), (1, 2, 0), (0, 3, 1))),
    ('abababababababab', 'aaaaaaaabbbbbbbb', False, 12.5, ((2, 14, 0), (0, 16, 2), (0, 16, 2))),
    ('.aaaaaa.', '..aa.aa.', False, 60.0, ((3, 0, 2), (3, 0, 2), (2, 1, 3))),
    ('........', '..aaa.bb', False, 25.0, ((1, 0, 3), (1, 0, 3), (0, 1, 4))),
    ('aa.', 'a..', False, 100.0, ((2, 0, 0), (2, 0, 0), (2, 0, 0))),
    ('aaaaaaaaab', 'aaaaaaaaab', False, 100.0, ((2, 0, 0), (2, 0, 0), (2, 0, 0))),
    ('ddbadacaabbbbbaaaaabbbb',
     'ddbaaacaabbbbbdaaaabbbb',
     False, 70.0, ((8, 2, 1), (8, 2, 1), (7, 3, 2))),
    ('..dddddddddddddaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa....abbbbbbbba..bbbbb..............',
     'dddddddddddddaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa....abbbbbbbba..bbbbb................',
     False, 90.0, ((6, 4, 3), (6, 4, 3), (4, 6, 5))),
    ('bbbddddddaa.ccc.......bdd...........dddddddddddddddddd',
     'aaaaaaaaaaaaaaaaaaaddddccccccbbbbbbbbbbbbbbbaaaaaaaaaa',
     False, 30.000000000000004, ((1, 9, 4), (0, 10, 5), (0, 10, 5))),
    ('aaaaaaaaaaa.aaa',
     'aaaaaaaaaaaaaaa',
     False, 33.333333333333336, ((1, 2, 0), (1, 2, 0), (1, 2, 0))),
    ('bbbbbbbbabbbbbbbbabbbbbaaaabaaaaaabbababbbbbababaaaa',
     'bbbbbbbbabbbbbbbbabbbbbaaaaaaaaaaabbabbbbbbbbbaaaaaa',
     False, 55.55555555555556, ((10, 8, 0), (10, 8, 0), (10, 8, 0))),
    ('cccbbbbbbbbbbbbbbccccccccccc',
     'bbbbbbbbbbbbbbcccccccccccccc',
     False, 66.66666666666667, ((2, 1, 0), (2, 1, 0), (2, 1, 0))),
    ('d...dbddddddddddddddddddcccccc...',
     'ddcaa.....ddddbbcaccccccccdc..bbc',
     False, 50.0, ((3, 4, 11), (1, 6, 13), (1, 6, 13))),
    ('eeeee.eeeeeeee.ccc', 'eeeeeeeeeeeeeeeccc', False, 40.0, ((2, 3, 0), (2, 3, 0), (2, 3, 0))),
    ('abaabbbbbbbbbbbbbbbbabbbbbbbabbabbbbbbbbbb',
     'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',
     False, 9.999999999999998, ((1, 9, 0), (1, 9, 0), (0, 10, 1))),
    ('dbbbbbbbbbbddddddddd',
     'bbbbbbbbbbdddddddddd',
     False, 66.66666666666667, ((2, 1, 0), (2, 1, 0), (2, 1, 0))),
    ('ccbbbbbbbb..bbbaaaaaaaaaaaaaaaaccccccaaaaaaaaabbaaaaaacccbbbbbbccccccc',
     'cccccccccccbbbaaaaaaaaaaaaaaccbbbbbbbbbbbbbbbbbbbb..aaaabbbbbbbbbb..aa',
     False, 41.666666666666664, ((6, 6, 4), (4, 8, 6), (3, 9, 7))),
    ('a.a..aa.aa.aaaaaaaaaabbbbbbbbbbbbbbbbb.aa',
     'aaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbaaa',
     False, 25.0, ((3, 9, 0), (3, 9, 0), (2, 10, 1))),
    ('bdddddddddddddddddddddddddddddddbdddccecccccecccaccacccccccc',
     'ddddddddddddddddddddddddddddddddddddcccccccccccccccccccccccc',
     False, 15.384615384615385, ((2, 11, 0), (2, 11, 0), (1, 12, 1))),
    ('bbbbbbbbbbbbbbbbbbbbbbbbbbbb',
     'bbbbbbbbbbbbbbbbbbbbbbbbbbbb',
     False, 100.0, ((1, 0, 0), (1, 0, 0), (1, 0, 0))),
    ('bbbbbbbbbbbbb', 'a............', False, 0.0, ((0, 1, 2), (0, 1, 2), (0, 1, 2))),
    ('abbbbb.bbbbbb.bb.......................................................',
     'abbbbbbbbbbbbbbb.......................................................',
     False, 42.85714285714286, ((3, 4, 0), (3, 4, 0), (2, 5, 1))),
    ('....e..bb', '.......bb', False, 50.0, ((2, 2, 0), (2, 2, 0), (2, 2, 0))),
    ('aaa.....b', '.....baaa', False, 33.333333333333336, ((1, 2, 2), (1, 2, 2), (0, 3, 3))),
    ('bbbbbbbbbaaaaaabbbaaa......................',
     'aaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbb',
     False, 40.0, ((1, 4, 1), (0, 5, 2), (0, 5, 2))),
    ('ccc......', 'cccc.....', False, 100.0, ((2, 0, 0), (2, 0, 0), (2, 0, 0))),
    ('daddaddaddbbdbbbcdccca',
     'ddddddddddbbbbbbddcccc',
     False, 28.57142857142857, ((4, 10, 0), (3, 11, 1), (3, 11, 1))),
    ('eaadccccceeeeeeeeaddeaaaadddddbbbbbbbbbbbbbbbbbccccddddddddddddaaabbbbbbee',
     'dccccceeeeeeeeaddeaaaadddddbbbbbbbbbbbbbbbbbccccddddddddddddaaabbbbbbeeeaa',
     False, 81.25, ((8, 8, 7), (6, 10, 9), (2, 14, 13))),
    ('bbbbbbbaaccccccccbaaaaa...ccbbacabbbbbbbaaaaaaacccb.c....babbbbbccc',
     'cc................................................bbbbbbbbbbbbbbbbb',
     False, 13.636363636363635, ((1, 21, 2), (1, 21, 2), (0, 22, 3))),
    ('cccc.ccccc.ccccccccccccccc',
     'cccccccccccccccccccccccccc',
     False, 19.999999999999996, ((1, 4, 0), (1, 4, 0), (1, 4, 0))),
]

# eval.py's main() over all the cases above (one dataset per background setting)
DATASETS = {
    True: {
        'accuracy': 62.91126620139581,
        'edit': 51.31066398206289,
        'f1@10': 50.15673981191222,
        'f1@25': 42.00626959247649,
        'f1@50': 31.34796238244514,
    },
    False: {
        'accuracy': 62.91126620139581,
        'edit': 49.818116824695785,
        'f1@10': 48.2573726541555,
        'f1@25': 41.286863270777474,
        'f1@50': 30.563002680965145,
    },
}


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

