"""Metrics against a hand-computed example, test-time averaging, and `spool eval` end to end."""

from __future__ import annotations

import errno
import json
import math
import re
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_MODEL, tiny_video_dataset

from spool.cli import main
from spool.data.dataset import read_annotations
from spool.models.classification import SpoolForVideoClassification
from spool.train.metrics import (
    MetricTracker,
    average_clip_scores,
    confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_curves,
    topk_correct,
)

# Six samples, three classes. By hand:
#   labels      0  0  1  1  2  2
#   argmax      0  1  1  1  0  2      -> top-1 correct: s0, s2, s3, s5 = 4/6
#   2nd best    2  0  2  0  1  1      -> top-2 adds s1 (label 0 is 2nd)  = 5/6
#   confusion (row true, col pred): [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
#   per class: 1/2, 2/2, 1/2
LOGITS = torch.tensor([[3.0, 1.0, 2.0], [2.0, 3.0, 1.0], [0.0, 3.0, 1.0],
                       [2.0, 3.0, 1.0], [3.0, 2.0, 1.0], [0.0, 1.0, 5.0]])
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_hand_computed_metrics() -> None:
    assert topk_correct(LOGITS, LABELS, (1, 2, 3, 5)) == {1: 4, 2: 5, 3: 6, 5: 6}
    # Ties: the lowest class is the top-1, as argmax and the confusion matrix take it
    # (topk ordered 441 of 859 tied rows otherwise, in bf16 evaluation over 400 classes).
    tied = torch.zeros(64, 400).to(torch.bfloat16)
    tied[:, 7] = tied[:, 300] = 1.0
    assert topk_correct(tied, tied.argmax(1), (1,)) == {1: 64}
    assert topk_correct(tied, torch.full((64,), 300), (1, 2)) == {1: 0, 2: 64}
    confusion = confusion_matrix(LOGITS.argmax(1), LABELS, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert per_class_accuracy(confusion) == [0.5, 1.0, 0.5]
    assert math.isnan(per_class_accuracy(torch.zeros(2, 2, dtype=torch.int64))[0])

    tracker = MetricTracker(3)
    losses = torch.nn.functional.cross_entropy(LOGITS, LABELS, reduction="none")
    tracker.update(LOGITS[:4], LABELS[:4], float(losses[:4].sum()))
    tracker.update(LOGITS[4:], LABELS[4:], float(losses[4:].sum()))
    m = tracker.compute()
    assert m["count"] == 6 and m["top1"] == pytest.approx(4 / 6) and m["top5"] == 1.0
    assert m["loss"] == pytest.approx(float(losses.mean()))
    assert tracker.confusion.tolist() == confusion.tolist()


def test_clip_averaging_uses_mean_probabilities() -> None:
    # Two clips of one video: clip 0 says class 0 mildly, clip 1 says class 1 strongly.
    logits = torch.tensor([[[1.0, 0.0], [0.0, 4.0]]])
    p0 = torch.tensor([math.e, 1.0]) / (math.e + 1)
    p1 = torch.tensor([1.0, math.e ** 4]) / (1 + math.e ** 4)
    torch.testing.assert_close(average_clip_scores(logits)[0], (p0 + p1) / 2)


def test_plots_are_written(tmp_path: Path) -> None:
    plot_confusion_matrix(confusion_matrix(LOGITS.argmax(1), LABELS, 3), list("abc"),
                          tmp_path / "cm.png")
    rows = [{"epoch": e, "train_loss": 1 / e, "train_top1": 0.1 * e, "val_loss": 1.1 / e,
             "val_top1": 0.09 * e} for e in (1, 2, 3)]
    plot_curves({"spool": rows, "baseline": rows}, tmp_path / "curves.png")
    for name in ("cm.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # Many classes: a bounded picture (400 classes were 20130 x 20020 pixels and 16 GB).
    import matplotlib.image

    many = torch.randint(0, 400, (2000,))
    plot_confusion_matrix(confusion_matrix(many, many.roll(1), 400),
                          [f"c{i}" for i in range(400)], tmp_path / "cm400.png")
    height, width = matplotlib.image.imread(tmp_path / "cm400.png").shape[:2]
    assert max(height, width) <= 25 * 110 + 10


def test_a_csv_rewritten_on_resume_survives_a_failure(tmp_path: Path, monkeypatch) -> None:
    """rewrite_csv truncated steps.csv in place: a kill while it wrote lost the run's log."""
    import csv

    from spool.train.metrics import rewrite_csv

    path = tmp_path / "steps.csv"
    path.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n")
    rewrite_csv(path, ("step", "loss"), lambda r: int(r["step"]) <= 2)
    assert path.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4"]

    def killed(self, rows):
        raise KeyboardInterrupt
    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        rewrite_csv(path, ("step", "loss"), lambda r: True)
    assert path.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4"]
    assert [p.name for p in tmp_path.iterdir()] == ["steps.csv"]  # no temporary left


def test_spool_eval_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "uniform", "num_frames": 4}
    model.save_pretrained(tmp_path / "model")
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(root / "val.txt"),
                 "--num-clips", "2", "--num-workers", "0", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed and names[0] in printed
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["count"] == 8 and set(report["per_class"]) == set(names)
    assert sum(map(sum, report["confusion"])) == 8
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--data",  # not ignored
                 str(root / "val.txt"), "--fps", "2"]) == 2
    assert "--fps: applies to frame classifiers" in capsys.readouterr().err
    assert len((tmp_path / "ev" / "predictions.csv").read_text().splitlines()) == 9

    # The same numbers from a token cache made with the model's backbone (one clip).
    assert main(["cache", "--data", str(root / "val.txt"), "--out", str(tmp_path / "cache"),
                 "--init", str(tmp_path / "model"), "--num-frames", "4", "--num-workers", "0",
                 "--quiet"]) == 0
    from spool.train.evaluate import evaluate_checkpoint
    on_videos = evaluate_checkpoint(str(tmp_path / "model"), str(root / "val.txt"),
                                    num_workers=0)
    on_cache = evaluate_checkpoint(str(tmp_path / "model"), cache=str(tmp_path / "cache"))
    assert on_cache["confusion"] == on_videos["confusion"]
    assert on_cache["loss"] == pytest.approx(on_videos["loss"], rel=1e-5)
    # Flags that cannot apply to a cache, or to this kind of classifier, are refused (they
    # were ignored: the same scores, exit 0).
    ev = ["eval", "--checkpoint", str(tmp_path / "model")]
    for extra, message in (
            (["--cache", str(tmp_path / "cache"), "--num-frames", "8"],
             "num_frames/frame_stride: a token cache holds the clips it was made with"),
            (["--cache", str(tmp_path / "cache"), "--frame-stride", "3"],
             "num_frames/frame_stride: a token cache"),
            (["--data", str(root / "val.txt"), "--split", "x"], "--split: applies to frame")):
        capsys.readouterr()
        assert main(ev + extra) == 2, extra
        assert message in capsys.readouterr().err, extra


def test_a_cache_of_a_bf16_or_hub_checkpoint_is_recognised(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    """A checkpoint saved in bf16 loads as float32, and the cache it made recorded that
    digest, against the file's bf16 bytes: "made by another backbone", with the advice to do
    what was done. A hub id with --cache opened "<hub id>/model.safetensors" as a path."""
    import huggingface_hub

    from spool.models.pretrained import checkpoint_backbone_digest

    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "uniform", "num_frames": 4}
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert main(["cache", "--data", str(root / "val.txt"), "--out", str(tmp_path / "cache"),
                 "--init", str(tmp_path / "bf16"), "--num-frames", "4", "--num-workers", "0",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "bf16"), "--cache",
                 str(tmp_path / "cache")]) == 0, capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda name, **kwargs: str(tmp_path / "bf16"))
    assert checkpoint_backbone_digest("someorg/spool-model") == checkpoint_backbone_digest(
        tmp_path / "bf16")
    assert main(["eval", "--checkpoint", "someorg/spool-model", "--cache",
                 str(tmp_path / "cache")]) == 0, capsys.readouterr().err


def test_eval_on_a_cache_refuses_other_normalisation(tmp_path: Path) -> None:
    """The cache's tokens were normalised with the model's image_mean; a checkpoint with the
    same weights but another image_mean (a non-persistent buffer, outside the weights' digest)
    would be scored on tokens it never sees: refused, naming the field."""
    from spool.models.pretrained import load_pretrained
    from spool.train.evaluate import evaluate_checkpoint

    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    model.save_pretrained(tmp_path / "model")
    assert main(["cache", "--data", str(root / "val.txt"), "--out", str(tmp_path / "cache"),
                 "--init", str(tmp_path / "model"), "--num-frames", "4", "--num-workers", "0",
                 "--quiet"]) == 0
    other = load_pretrained(tmp_path / "model", image_mean=(0.5, 0.5, 0.5))
    other.save_pretrained(tmp_path / "other")
    evaluate_checkpoint(str(tmp_path / "model"), cache=str(tmp_path / "cache"))  # agrees
    with pytest.raises(ValueError, match="made with other image_mean than"):
        evaluate_checkpoint(str(tmp_path / "other"), cache=str(tmp_path / "cache"))


def test_differing_token_fields() -> None:
    from spool.config import SpoolConfig, differing_token_fields

    a = SpoolConfig(**TINY_MODEL).frame_encoder_fields()
    assert differing_token_fields(a, dict(a)) == []
    assert differing_token_fields(a, None) == []  # a cache from before fields were recorded
    b = dict(a, image_std=[0.2, 0.2, 0.2], token_pooling=2, hidden_size=7)
    assert differing_token_fields(a, b) == ["image_std", "token_pooling"]  # shapes: elsewhere


def test_eval_on_a_cache_with_classes_in_another_order(tmp_path: Path) -> None:
    """A cache of class folders (sorted names) for a model trained in classes.txt's order:
    the same report as on a cache in the model's order, labels mapped by name."""
    from spool.train.evaluate import evaluate_checkpoint

    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    assert sorted(names) != names
    SpoolForVideoClassification(**TINY_MODEL, class_names=names).save_pretrained(
        tmp_path / "model")
    for name, classes in (("sorted", []), ("ordered", ["--classes-from", root / "train.txt"])):
        assert main(["cache", "--data", str(root / "videos"), "--out", str(tmp_path / name),
                     "--init", str(tmp_path / "model"), "--num-frames", "4", "--num-workers",
                     "0", "--quiet", *map(str, classes)]) == 0
    ordered = evaluate_checkpoint(str(tmp_path / "model"), cache=str(tmp_path / "ordered"))
    mapped = evaluate_checkpoint(str(tmp_path / "model"), cache=str(tmp_path / "sorted"))
    assert mapped["loss"] == pytest.approx(ordered.pop("loss"), rel=1e-6)  # summed in
    del mapped["loss"]  # another order
    assert mapped == ordered and mapped["class_names"] == names


def test_a_class_without_videos_is_null_in_metrics_json(tmp_path: Path, capsys) -> None:
    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "uniform", "num_frames": 4}
    model.save_pretrained(tmp_path / "model")
    lines = [line.split() for line in (root / "val.txt").read_text().splitlines()]
    kept = [(str(root / path), label) for path, label in lines if label == names[0]]
    (tmp_path / "val.txt").write_text("".join(f"{p} {label}\n" for p, label in kept))
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--data",
                 str(tmp_path / "val.txt"), "--num-workers", "0", "--out",
                 str(tmp_path / "ev")]) == 0
    assert "n/a" in capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    report = json.loads((tmp_path / "ev" / "metrics.json").read_text(),
                        parse_constant=refuse)
    assert report["per_class"][names[1]] is None
    assert isinstance(report["per_class"][names[0]], float)


@pytest.mark.parametrize(("command", "advice"), [
    ("eval", "spool eval ... --device cuda uses one GPU"),
    ("cache", "--device cuda uses one GPU; a cache is made once, and spool train reads it "
              "under torchrun")])
def test_eval_and_cache_under_torchrun_are_refused_once(tmp_path: Path, monkeypatch, capsys,
                                                        command, advice) -> None:
    """spool cache under torchrun failed on its second rank with a lock error ('another
    spool cache is using it'), and the first was then killed."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = [command, "--data", "val.txt"] + (
        ["--checkpoint", str(tmp_path / "model")] if command == "eval" else
        ["--out", str(tmp_path / "cache")])
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"spool {command}: error: spool {command} runs in a single process; run it "
                   f"without torchrun ({advice})")
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 2
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "cache").exists()


def test_eval_with_nothing_scored_exits_1_and_a_bad_out_fails_first(tmp_path: Path,
                                                                   capsys) -> None:
    """Every video unreadable printed 'top-1: nan%' and exited 0; an --out that is a file
    failed only after every video was scored."""
    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "uniform", "num_frames": 4}
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "bad.mp4").write_text("not a video\n")
    (tmp_path / "val.txt").write_text(f"{tmp_path / 'bad.mp4'} {names[0]}\n")
    args = ["eval", "--checkpoint", str(tmp_path / "model"), "--num-workers", "0"]
    assert main([*args, "--data", str(tmp_path / "val.txt")]) == 1
    assert "no video could be scored" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main([*args, "--data", str(root / "val.txt"), "--out", str(tmp_path / "file")]) == 2
    captured = capsys.readouterr()
    assert "--out:" in captured.err and "is a file" in captured.err
    assert "top-1" not in captured.out  # refused before evaluating


def test_load_classifier_passes_the_hub_arguments_on(tmp_path: Path, monkeypatch) -> None:
    """Its architecture check asked the hub without them: a private repo failed with its
    token given, and a revision was checked at main."""
    import huggingface_hub

    from spool.models.classification import load_classifier

    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    SpoolForVideoClassification(**TINY_MODEL, class_names=names).save_pretrained(
        tmp_path / "v1")
    calls = []

    def snapshot(name, **kwargs):
        calls.append(kwargs)
        if kwargs.get("token") != "secret" or kwargs.get("revision") != "v1":
            raise huggingface_hub.errors.RepositoryNotFoundError("private")
        return str(tmp_path / "v1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    model = load_classifier("org/private", token="secret", revision="v1")
    assert model.class_names == names
    assert calls and all(c["token"] == "secret" and c["revision"] == "v1" for c in calls)


def _eval_argv(tmp_path: Path, out: Path) -> list[str]:
    """`spool eval` of a tiny clip classifier on the 8 val videos, into ``out``."""
    root = tiny_video_dataset()
    _, names = read_annotations(root / "train.txt")
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "uniform", "num_frames": 4}
    model.save_pretrained(tmp_path / "model")
    return ["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(root / "val.txt"),
            "--num-workers", "0", "--out", str(out)]


def test_an_out_that_cannot_be_made_fails_before_evaluating(tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    """--out under a regular file failed ("Not a directory") only when the files were
    written, after every video was scored, and the results were lost."""
    from spool.train import evaluate

    scored = []
    real = evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: scored.append(1) or real(*a, **k))
    (tmp_path / "file").write_text("")
    assert main(_eval_argv(tmp_path, tmp_path / "file" / "ev")) == 2
    captured = capsys.readouterr()
    assert (f"spool eval: error: --out: cannot make the folder {tmp_path / 'file' / 'ev'}: "
            "Not a directory") in captured.err
    assert scored == [] and "top-1" not in captured.out


def test_the_report_is_printed_before_the_files_are_written(tmp_path: Path, capsys,
                                                           monkeypatch) -> None:
    """A write that fails (a full disk) after the evaluation still shows its results."""
    from spool.train import evaluate

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(evaluate, "atomic_write_text", full)
    assert main(_eval_argv(tmp_path, tmp_path / "ev")) == 2
    captured = capsys.readouterr()
    assert "top-1" in captured.out and "videos: 8" in captured.out
    assert "No space left on device" in captured.err


def test_a_rerun_stopped_before_its_files_leaves_no_metrics_beside_old_predictions(
        tmp_path: Path, monkeypatch) -> None:
    """metrics.json was written first: a rerun stopped after it left this run's metrics
    beside the earlier run's predictions.csv. It is now written last, the earlier one gone."""
    from spool.train import metrics

    assert main(_eval_argv(tmp_path, tmp_path / "ev")) == 0

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(metrics, "plot_confusion_matrix", stopped)
    assert main(_eval_argv(tmp_path, tmp_path / "ev")) == 130
    assert not (tmp_path / "ev" / "metrics.json").exists()
    # Nor the earlier run's picture (crash-safety audit: it stayed beside new predictions).
    assert not (tmp_path / "ev" / "confusion_matrix.png").exists()
    monkeypatch.undo()
    assert main(_eval_argv(tmp_path, tmp_path / "ev")) == 0
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_the_skipped_note_says_why_videos_were_skipped() -> None:
    """A video skipped for a full offload disk or memory was counted as unreadable ("2
    unreadable, skipped"; "every one was unreadable"), though the file was fine."""
    from spool.train.evaluate import skipped_note

    def report(*errors, count=None):
        rows = [[f"v{i}.mp4", e, "..."] for i, e in enumerate(errors)]
        return {"skipped": len(errors) if count is None else count, "skipped_videos": rows}

    assert skipped_note(report()) == ""
    assert skipped_note(report("VideoDecodeError")) == " (1 unreadable, skipped)"
    assert skipped_note(report("MemoryError", "OutOfMemoryError")) == \
        " (2 out of memory or disk, skipped)"
    assert skipped_note(report("FileNotFoundError", "MemoryError")) == \
        " (1 unreadable, 1 out of memory or disk, skipped)"
    assert skipped_note(report("MemoryError", count=3)) == " (3 skipped)"  # other ranks' too
    # torch's CPU allocator runs out in a RuntimeError, which eval skips as out of memory
    allocator = {"skipped": 2, "skipped_videos": [
        ["a.mp4", "RuntimeError", "DefaultCPUAllocator: can't allocate memory: you tried"],
        ["b.mp4", "RuntimeError", "shape mismatch"]]}
    assert skipped_note(allocator) == " (1 unreadable, 1 out of memory or disk, skipped)"
    # a full disk (the offloaded state of a long video) is no fault of the video
    full = {"skipped": 2, "skipped_videos": [
        ["a.mp4", "OSError", str(OSError(errno.ENOSPC, "No space left on device", "/t/x"))],
        ["b.mp4", "OSError", str(OSError(errno.EIO, "Input/output error", "b.mp4"))]]}
    assert skipped_note(full) == " (1 unreadable, 1 out of memory or disk, skipped)"


def test_eval_shows_its_progress_unless_quiet(tmp_path: Path, capsys) -> None:
    """A clip classifier's evaluation showed nothing until its report (hours on a large
    set), and `spool eval` had no --quiet for the frame classifiers' bars."""
    argv = _eval_argv(tmp_path, tmp_path / "ev")
    assert main(argv) == 0
    assert re.search(r"eval: 100%\|.*\| 8/8 \[", capsys.readouterr().err)
    assert main([*argv, "--quiet"]) == 0
    said = capsys.readouterr()
    assert said.err == "" and "top-1" in said.out


def test_figures_name_a_runs_checkpoint_after_its_run() -> None:
    """Every run saves to RUN/model, so the confusion matrix and ribbons said "model"."""
    from spool.train.evaluate import checkpoint_label

    assert checkpoint_label("runs/kinetics-k4/model") == "kinetics-k4"
    assert checkpoint_label("exported/my-classifier") == "my-classifier"
    assert checkpoint_label("model") == "model"


def test_eval_says_which_dtype_it_ran_in_and_takes_no_amp(tmp_path: Path, monkeypatch) -> None:
    """A clip classifier was evaluated under bf16 autocast on a GPU with no way to turn it
    off, and metrics.json did not say so."""
    from spool.train import evaluate

    asked = []
    real = evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate",
                        lambda *a, **k: asked.append(k["amp"]) or real(*a, **k))
    argv = _eval_argv(tmp_path, tmp_path / "ev")
    assert main([*argv, "--quiet"]) == 0 and main([*argv, "--quiet", "--no-amp"]) == 0
    assert asked == [True, False]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["dtype"] == "float32"  # on the CPU, with or without --amp
    report = evaluate.evaluate_checkpoint(argv[2], data=argv[4], num_workers=0)
    assert report["dtype"] == "float32"


def test_the_loss_of_several_clips_per_video_is_the_mean_nll_of_their_mean_probabilities(
        ) -> None:
    """Batches of several videos of K clips each: the loss is each video's NLL of its clips'
    mean softmax, averaged over the videos (a per-batch mean where a sum was due went
    unnoticed)."""
    from conftest import tiny_config

    from spool.train.evaluate import evaluate

    torch.manual_seed(0)
    model = SpoolForVideoClassification(tiny_config(class_names=["a", "b", "c"])).eval()
    videos = torch.randint(0, 256, (5, 2, 3, 32, 32, 3), dtype=torch.uint8)  # [N, K, T, ...]
    labels = [0, 2, 1, 1, 0]
    items = [{"video": v, "label": y, "index": i}
             for i, (v, y) in enumerate(zip(videos, labels, strict=True))]
    metrics = evaluate(model, items, 3, batch_size=3).metrics
    with torch.no_grad():
        probs = model(videos.flatten(0, 1)).logits.softmax(-1).view(5, 2, 3).mean(1)
    expected = -probs[torch.arange(5), torch.tensor(labels)].log().mean()
    assert metrics["count"] == 5
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
