"""Defects found checking the docs' and help's claims against the CLI (eighth session)."""

from pathlib import Path

import pytest

from spool.cli import main


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_a_memory_error_is_one_line_and_exit_2(monkeypatch, capsys):
    """Defect: the long-video memory check's MemoryError (spool eval of a frame classifier)
    escaped the CLI as a traceback with exit 1, which reads as "nothing scored"."""
    import spool.commands.eval as eval_command

    def run(args):
        raise MemoryError("forward_long over 107 frames needs about 9.0 GiB but 1.0 GiB are "
                          "available")

    monkeypatch.setattr(eval_command, "run", run)
    err = _error(capsys, ["eval", "--checkpoint", "x", "--data", "y"])
    assert "spool eval: error: forward_long over 107 frames" in err


@pytest.mark.parametrize("reader", ["annotations", "segments", "list"])
def test_a_video_given_for_a_text_file_is_named(tmp_path: Path, reader: str):
    """Defect: a video passed where an annotation file was expected gave "'utf-8' codec
    can't decode byte 0x9c in position 51", naming neither the file nor the mistake."""
    from spool.data.dataset import read_annotations
    from spool.data.segmentation import read_segments_csv
    from spool.extract_inputs import collect_inputs

    path = tmp_path / ("clip.txt" if reader == "list" else "clip.mp4")
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42\x9c\xff\xfe")
    call = {"annotations": read_annotations, "segments": read_segments_csv,
            "list": lambda p: list(collect_inputs([p]))}[reader]
    with pytest.raises(ValueError, match=rf"{path.name}: expected .*is it a video"):
        call(path)


def test_settings_spool_cache_would_ignore_are_refused(tmp_path: Path, capsys):
    """Defects: with one view (never augmented) --hflip and --crop-scale were ignored; so
    were --model fields outside the frame encoder (num_hidden_layers=3), and --split with a
    segments CSV. Each is now a one-line error before any work."""
    csv = tmp_path / "segments.csv"
    csv.write_text("video,start_s,end_s,label\nclip.mp4,0,1,a\n")
    base = ["cache", "--data", str(csv), "--out", str(tmp_path / "out")]
    assert "--hflip: applies to augmented views" in _error(capsys, [*base, "--hflip"])
    assert "--crop-scale: applies to augmented views" in _error(
        capsys, [*base, "--crop-scale", "0.1", "0.2"])
    assert "--model: ['num_hidden_layers'] do not change a cache" in _error(
        capsys, [*base, "--model", "num_hidden_layers=3"])
    assert "--split: applies to an MS-TCN root" in _error(
        capsys, [*base, "--task", "frames", "--split", "test.split1"])
    assert not (tmp_path / "out").exists()


def test_other_ignored_flags_are_refused(tmp_path: Path, capsys):
    from conftest import tiny_config

    from spool.models import SpoolForVideoClassification

    assert "--no-download: is for the real-footage demo" in _error(
        capsys, ["demo", "--no-download", "--out", str(tmp_path / "d")])
    SpoolForVideoClassification(tiny_config(class_names=["a", "b"])).save_pretrained(
        tmp_path / "model")
    assert "--num-workers: applies to videos (--data)" in _error(
        capsys, ["eval", "--checkpoint", str(tmp_path / "model"), "--cache", str(tmp_path),
                 "--num-workers", "3"])


def test_spool_backbone_shows_the_traceback_with_debug(tmp_path: Path, capsys):
    """Defect: ``spool --debug backbone ...`` printed one line like any run."""
    (tmp_path / "taken").write_text("x")
    argv = ["backbone", "import", "dinov2-small", "--out", str(tmp_path), "--no-download"]
    assert main(argv) == 2
    with pytest.raises(FileExistsError):
        main(["--debug", *argv])


def test_the_missing_weights_advice_names_the_command_with_onnx():
    """Defect: ``spool demo --real`` said to pass the file "with --onnx", an option only
    ``spool backbone import`` has."""
    from spool.backbones.dinov2_small import _how_to_get

    assert "`spool backbone import dinov2-small --out DIR --onnx FILE`" in _how_to_get()


def test_line_breaks_inside_quoted_csv_fields_are_kept(tmp_path: Path):
    """Review of my change: reading the segments CSV as text turned a quoted "x\\r\\ny" into
    "x\\ny" before the csv module saw it."""
    from spool.io_utils import read_text_file

    path = tmp_path / "a.csv"
    path.write_bytes(b'\xef\xbb\xbfvideo,label\r\nclip.mp4,"x\r\ny"\r\n')
    assert read_text_file(path, "a CSV") == 'video,label\r\nclip.mp4,"x\r\ny"\r\n'


def test_predictions_follow_top_1_where_the_softmax_rounds_into_a_tie():
    """Defect (metrics review): ``predictions.csv`` took the argmax of the softmax, which
    float32 rounds into a tie for logits [0, 1e-8] (class 0), while top-1 and the confusion
    matrix took the logits' (class 1)."""
    import torch

    from spool.models.classification import ClassifierOutput, clip_classification_loss
    from spool.train.evaluate import evaluate

    class Fixed(torch.nn.Module):
        loss_function = staticmethod(clip_classification_loss)

        def forward(self, tokens):
            return ClassifierOutput(torch.tensor([[0.0, 1e-8]]).expand(len(tokens), 2), None)

    items = [{"tokens": torch.zeros(1, 1, 1), "label": 1, "index": i} for i in range(3)]
    result = evaluate(Fixed(), items, 2, keep_scores=True, amp=False)
    assert result.tracker.confusion.tolist() == [[0, 0], [0, 3]]
    assert int(result.scores[0].argmax()) == 0  # what predictions.csv took before
    assert result.predictions.tolist() == [1, 1, 1]  # what it takes now, as top-1 does


@pytest.mark.parametrize("command", [
    ["extract", "data/train.txt", "--out", "OUT"],
    ["cache", "--data", "data/train.txt", "--out", "OUT"],
    ["train", "--train-data", "data/train.txt", "--out-dir", "OUT", "--batch-size", "2"]])
@pytest.mark.parametrize("out", ["afile", "afile/sub", "alink"])
def test_an_output_folder_that_is_a_file_is_named(tmp_path: Path, capsys, monkeypatch,
                                                  command: list[str], out: str):
    """Found walking the README through: "[Errno 17] File exists: 'afile'"."""
    from spool.data.synthetic import make_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    make_synthetic_dataset(tmp_path / "data", 1, num_frames=4, size=32)
    (tmp_path / "afile").write_text("")
    (tmp_path / "alink").symlink_to(tmp_path / "gone")  # scratch space not mounted
    tiny = ('backbone_config={"model_type":"dinov2","hidden_size":32,"num_hidden_layers":1,'
            '"num_attention_heads":2,"intermediate_size":64,"patch_size":8,"image_size":32}')
    heads = ("hidden_size=32", "num_attention_heads=2", "num_lookback_heads=1",
             "num_lookahead_heads=1")
    argv = [out if a == "OUT" else a for a in command] + ["--model", tiny] + [
        flag for field in heads if command[0] == "train" for flag in ("--model", field)]
    err = _error(capsys, argv)
    expected = {"afile": "a file is there where a folder is needed",
                "afile/sub": "a file in its path stands where a folder is needed",
                "alink": "a broken link is there where a folder is needed"}[out]
    assert f"error: {out}: {expected}" in err


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path):
    """`spool eval ... | head -1`: exit 2 with "error: [Errno 32] Broken pipe"."""
    import subprocess
    import sys

    script = ("import sys, spool.commands.eval as e\n"
              "e.run = lambda args: [print('row ' * 20) for _ in range(100000)]\n"
              "from spool.cli import main\n"
              "sys.exit(main(['eval', '--checkpoint', 'x', '--data', 'y']))\n")
    reader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    reader.stdout.readline()
    reader.stdout.close()  # as head does once it has its line
    assert reader.wait(timeout=120) == 141
    assert reader.stderr.read().decode() == ""


def test_a_closed_pipe_without_a_descriptor_still_ends_quietly(monkeypatch, capsys):
    """Under capture (no real stdout descriptor) the pipe handling itself raised."""
    import spool.commands.eval as eval_command

    def run(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(eval_command, "run", run)
    assert main(["eval", "--checkpoint", "x", "--data", "y"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["cache", "--data", "x.txt", "--out", "o"], ["demo"]])
@pytest.mark.parametrize("value", ["-1", "99999999999999999999"])
def test_a_seed_out_of_range_is_refused_up_front(command, value, capsys):
    """`spool cache --seed -1` failed after loading the model ("expected non-negative
    integer"), `spool demo --seed 1e20` with "Overflow when unpacking long long"."""
    with pytest.raises(SystemExit) as stop:
        main([*command, "--seed", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--seed: expected an integer" in err and "Overflow" not in err


def test_a_training_runs_folder_given_as_the_checkpoint_names_its_model(tmp_path, capsys):
    """`spool eval --checkpoint RUN` (RUN/model meant) said only "no config.json; is RUN a
    Spool checkpoint"."""
    from train_helpers import TINY_MODEL

    from spool.models.spool import Spool

    Spool(**{k: v for k, v in TINY_MODEL.items() if k != "class_names"}).save_pretrained(
        tmp_path / "run" / "model")
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", "x.txt"]) == 2
    assert (f"no config.json; did you mean {tmp_path / 'run' / 'model'}, the model of the run "
            f"in {tmp_path / 'run'}?") in capsys.readouterr().err


def test_extract_into_a_folder_it_cannot_write_is_refused_up_front(tmp_path, monkeypatch,
                                                                   capsys):
    """Each video failed with PermissionError, as if it were a bad video, and the job then
    ended on failures.csv's claim; eval refused such an --out up front."""
    import os

    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(out)
                        else real(p, mode))  # as a read-only folder is to a user (not root)
    assert main(["extract", str(tmp_path / "v.mp4"), "--out", str(out)]) == 2
    assert f"--out: {out} is not writable" in capsys.readouterr().err


def test_another_backbone_beside_a_checkpoint_is_refused(tmp_path, monkeypatch):
    """`spool cache --init ENC --model backbone_name=OTHER` made tokens with ENC's backbone and
    recorded OTHER in cache.json and backbone/config.json, exit 0."""
    from train_helpers import TINY_MODEL

    from spool.models.spool import Spool

    Spool(**{k: v for k, v in TINY_MODEL.items() if k != "class_names"}).save_pretrained(
        tmp_path / "m")
    with pytest.raises(ValueError, match=r"^backbone_name: .* holds the weights of its "
                                         r"backbone, .*, not .*other'; another backbone needs"):
        Spool.from_pretrained(tmp_path / "m", backbone_name=str(tmp_path / "other"))
    assert Spool.from_pretrained(tmp_path / "m", image_size=TINY_MODEL.get("image_size", 32))
    # The same backbone spelled otherwise (a link, a relative path; a config's own entries)
    # is the same: the review found it refused.
    (tmp_path / "dino").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dino")
    saved = Spool(**{**{k: v for k, v in TINY_MODEL.items() if k != "class_names"},
                     "backbone_name": str(tmp_path / "link")})
    saved.save_pretrained(tmp_path / "m2")
    monkeypatch.chdir(tmp_path)
    for same in ("dino", "./link/", str(tmp_path / "dino")):
        Spool.from_pretrained(tmp_path / "m2", backbone_name=same)
    small = dict(TINY_MODEL["backbone_config"])
    Spool.from_pretrained(tmp_path / "m2", backbone_config=small)
    with pytest.raises(ValueError, match="^backbone_config: "):
        Spool.from_pretrained(tmp_path / "m2", backbone_config={**small, "hidden_size": 48})


def test_cache_and_extract_take_each_others_progress_flag() -> None:
    """The same script flags for both: `spool cache --no-progress` was an error (exit 2)."""
    from spool.cli import build_parser

    parser = build_parser()
    for flag in ("--quiet", "--no-progress"):
        assert parser.parse_args(["cache", "--data", "a.txt", "--out", "c", flag]).quiet
        assert parser.parse_args(["extract", "v.mp4", "--out", "o", flag]).no_progress


def test_python_dash_m_spool_and_version() -> None:
    """`python -m spool` was "No module named spool.__main__"; `spool --version` did not
    exist."""
    import subprocess
    import sys

    from spool import __version__

    out = subprocess.run([sys.executable, "-m", "spool", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"spool {__version__}"


def test_a_collective_that_fails_is_one_line_not_a_traceback(monkeypatch, capsys) -> None:
    """A rank killed under torchrun left the others with gloo's 40-line traceback ("Connection
    closed by peer"); an error of Spool's own code still raises."""
    import pytest
    import torch.distributed as dist

    from spool.cli import main
    from spool.commands import cache

    def collective(args):  # an error raised inside torch.distributed, as gloo's is
        dist.all_reduce(None)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_group",
                        lambda: (_ for _ in ()).throw(RuntimeError("Connection closed by peer")))
    monkeypatch.setattr(cache, "run", collective)
    assert main(["cache", "--data", "x.txt", "--out", "y"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spool cache: error (rank 0): a collective of the torchrun job "
                          "failed (RuntimeError: Connection closed by peer), most likely")
    # Spool's own errors, in torch.distributed or out of it, and a rendezvous that failed
    # (no peer was ever there) still raise as they are.
    for error in (RuntimeError("bug"), RuntimeError("Tensors must have the same shape"),
                  dist.DistNetworkError("EADDRINUSE; Connection reset by peer")):
        monkeypatch.setattr(dist.distributed_c10d, "_get_default_group",
                            lambda error=error: (_ for _ in ()).throw(error))
        with pytest.raises(RuntimeError, match=str(error).split(";")[0]):
            main(["cache", "--data", "x.txt", "--out", "y"])
