"""MS-TCN and the linear probe: shapes, padding, receptive field, loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spool.models.temporal_conv import LinearProbe, MultiStageTCN, ms_tcn_loss


def test_shapes_and_standard_size() -> None:
    model = MultiStageTCN(12, 5).eval()
    assert len(model.stages) == 4 and len(model.stages[0].layers) == 10
    assert [layer.conv_dilated.dilation[0] for layer in model.stages[0].layers] == [
        2**i for i in range(10)]
    assert model.stages[0].conv_in.out_channels == 64 and model.stages[1].conv_in.in_channels == 5
    assert model(torch.randn(2, 37, 12)).shape == (4, 2, 37, 5)
    probe = LinearProbe(12, 5)
    assert probe(torch.randn(2, 37, 12)).shape == (2, 37, 5)


def test_padding_does_not_change_real_frames() -> None:
    model, probe = MultiStageTCN(6, 3, num_layers=4).eval(), LinearProbe(6, 3).eval()
    long, short = torch.randn(1, 40, 6), torch.randn(1, 25, 6)
    batch = torch.cat([long, F.pad(short, (0, 0, 0, 15), value=7.0)])  # junk in the padding
    mask = torch.arange(40) < torch.tensor([[40], [25]])
    for net in (model, probe):
        out = net(batch, mask)
        torch.testing.assert_close(out[..., 0, :, :], net(long)[..., 0, :, :])
        torch.testing.assert_close(out[..., 1, :25, :], net(short)[..., 0, :, :])
        assert (out[..., 1, 25:, :] == 0).all()


def test_one_stage_sees_1023_frames_each_side() -> None:
    stage = MultiStageTCN(4, 3, num_stages=1).eval()
    assert stage.stages[0].receptive_field == 1023
    T, t = 2100, 1050
    x = torch.randn(1, T, 4)
    y = x.clone()
    y[0, t] += 1.0
    with torch.no_grad():
        changed = (stage(x) - stage(y)).abs().amax(dim=-1)[0, 0] > 0
    assert changed[t - 1023] and changed[t + 1023]
    assert not changed[: t - 1023].any() and not changed[t + 1024:].any()


def test_loss_ignores_minus_100_and_matches_the_definition() -> None:
    logits = torch.randn(2, 3, 9, 4, requires_grad=True)  # [S, B, T, C]
    labels = torch.randint(0, 4, (3, 9))
    labels[0, :4] = -100
    ce = ms_tcn_loss(logits, labels, smoothing_weight=0.0)
    keep = labels != -100
    expected = sum(F.cross_entropy(s[keep], labels[keep]) for s in logits)
    torch.testing.assert_close(ce, expected)
    (grad,) = torch.autograd.grad(ce, logits)
    assert (grad[:, 0, :4] == 0).all() and (grad[:, 0, 4:] != 0).any()
    # The smoothing term: clamped squared log-probability steps, 0.15 per stage mean.
    logp = logits.log_softmax(-1)
    sq = (logp[:, :, 1:] - logp[:, :, :-1]).pow(2).clamp(max=16).mean(dim=(1, 2, 3)).sum()
    torch.testing.assert_close(ms_tcn_loss(logits, labels), expected + 0.15 * sq)
    nothing = ms_tcn_loss(logits, torch.full((3, 9), -100), smoothing_weight=0.0)
    assert nothing.item() == 0.0  # no labelled frame: 0, not NaN
    with pytest.raises(ValueError, match="logits/labels"):
        ms_tcn_loss(logits, labels[:, :5])


def test_errors_name_the_argument() -> None:
    model = MultiStageTCN(6, 3, num_layers=2)
    with pytest.raises(ValueError, match=r"features: expected \[B, T, 6\]"):
        model(torch.randn(1, 10, 5))
    with pytest.raises(ValueError, match="mask: expected shape"):
        model(torch.randn(1, 10, 6), torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_stages"):
        MultiStageTCN(6, 3, num_stages=0)


def test_loss_smoothing_pulls_only_the_later_frame_and_skips_padding() -> None:
    """MS-TCN detaches the earlier frame of each pair: the smoothing term's gradient reaches
    frame t only through the pair (t-1, t). A padded frame (mask False) takes part in no pair
    and no cross-entropy, whatever label it holds."""
    logits = torch.randn(1, 4, 3, requires_grad=True)  # [B, T, C]
    unlabelled = torch.full((1, 4), -100)
    smooth = ms_tcn_loss(logits, unlabelled, smoothing_weight=1.0)
    (grad,) = torch.autograd.grad(smooth, logits)
    assert (grad[0, 0] == 0).all() and (grad[0, 1:] != 0).any(dim=-1).all()

    labels = torch.tensor([[0, 1, 2, 1]])
    mask = torch.tensor([[True, True, False, True]])  # frame 2 padded, its label still 2
    got = ms_tcn_loss(logits, labels, mask, smoothing_weight=0.5)
    logp = logits.log_softmax(-1)[0]
    ce = F.cross_entropy(logits[0, [0, 1, 3]], labels[0, [0, 1, 3]])
    pair = (logp[1] - logp[0]).pow(2).mean()  # the only pair of two real frames
    torch.testing.assert_close(got, ce + 0.5 * pair)
