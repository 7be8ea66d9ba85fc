"""The Spool model: shapes, mask semantics by perturbation, gradients, save/load."""

import json

import pytest
import torch
from conftest import tiny_backbone, tiny_config

from spool import Spool, SpoolConfig
from spool.layers.masks import frame_mask

SEED_KWARGS = dict(num_hidden_layers=12, num_attention_heads=12, num_lookahead_heads=6,
                   num_lookback_heads=6, image_size=224, local_frame_range=16)


@pytest.fixture(scope="module")
def seed_model():
    """The seed's configuration, with a tiny random backbone standing in for dinov2-base."""
    backbone = tiny_backbone(hidden_size=48, patch_size=56, image_size=224)
    return Spool(**SEED_KWARGS, backbone_name="facebook/dinov2-base",
                 backbone_config=backbone).eval()


@pytest.mark.parametrize("B,T,w", [(1, 1, 16), (2, 5, 16), (3, 7, 0), (1, 4, 4), (2, 3, 50)])
def test_seed_configuration_shapes(seed_model, B, T, w):
    for layer in seed_model.temporal.layers:
        layer.attn.local_frame_range = w
    video = torch.randint(0, 256, (B, T, 37, 53, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = seed_model(video)
    features, context = out
    L, D = 1 + 4 * 4, 48
    assert features.shape == (B, T + 2, L, D)
    assert context.shape == (B, 2 * D)
    assert out.features is features and out.context is context
    expected = torch.cat((features[:, 0].mean(1), features[:, -1].mean(1)), dim=-1)
    torch.testing.assert_close(context, expected)


def test_float_and_uint8_video_agree(tiny_model):
    video = torch.randint(0, 256, (1, 3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        a = tiny_model(video).features
        b = tiny_model(video.float() / 255).features
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _changed_frames(model, T, j, via_pixels):
    """Which output frames move when input frame j (1-based real frame) changes."""
    if via_pixels:
        x = torch.rand(1, T, 32, 32, 3)
        y = x.clone()
        y[:, j - 1] = torch.rand(32, 32, 3)
        run = model
    else:
        L, D = model.config.num_spatial_tokens, model.config.hidden_size
        x = torch.randn(1, T, L, D)
        y = x.clone()
        y[:, j - 1] += torch.randn(L, D)
        run = model.forward_tokens
    with torch.no_grad():
        a, b = run(x).features, run(y).features
    return ((a - b).abs().amax(dim=(0, 2, 3)) > 1e-6).tolist()


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("via_pixels", [False, True])
def test_mask_semantics_by_perturbation(lookahead, via_pixels):
    T, w = 7, 2
    heads = dict(num_lookahead_heads=4, num_lookback_heads=0) if lookahead else dict(
        num_lookahead_heads=0, num_lookback_heads=4)
    model = Spool(tiny_config(num_hidden_layers=1, local_frame_range=w, **heads)).eval()
    allowed = frame_mask(T + 2, w, lookahead=lookahead)
    for j in range(1, T + 1):
        changed = _changed_frames(model, T, j, via_pixels)
        assert changed == allowed[:, j].tolist(), f"perturbing frame {j}"


def test_lookback_only_model_never_sees_later_real_frames_directly():
    model = Spool(tiny_config(num_hidden_layers=1, num_lookahead_heads=0,
                              num_lookback_heads=4, local_frame_range=10)).eval()
    T = 6
    for j in range(1, T + 1):
        changed = _changed_frames(model, T, j, via_pixels=False)
        assert not any(changed[1:j]), f"frames before {j} moved"
        assert changed[0], "the start context frame sees every frame"


@pytest.mark.parametrize("impl", ["blocked", "dense", "flex"])
def test_model_implementations_agree(impl):
    ref = Spool(tiny_config(num_hidden_layers=2, attn_implementation="reference")).eval()
    other = Spool(ref.config.replace(attn_implementation=impl)).eval()
    other.load_state_dict(ref.state_dict())
    video = torch.rand(2, 6, 32, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(other(video).features, ref(video).features,
                                   atol=1e-5, rtol=1e-5)


def test_gradients_reach_context_and_temporal_not_frozen_backbone(tiny_model):
    tiny_model.train()
    out = tiny_model(torch.rand(2, 4, 32, 32, 3))
    (out.features.square().mean() + out.context.square().mean()).backward()
    for name, p in tiny_model.named_parameters():
        if name.startswith("backbone."):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not tiny_model.backbone.model.training, "a frozen backbone stays in eval mode"


def test_fine_tuned_backbone_gets_gradients():
    model = Spool(tiny_config(freeze_backbone=False)).train()
    model(torch.rand(1, 3, 32, 32, 3)).context.sum().backward()
    # Every trainable parameter gets a gradient, as DDP needs (it stopped at step 2): DINOv2's
    # mask_token, used only for masked-image pre-training, a zero one.
    trained = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.") for n in trained)
    assert all(g is not None for g in trained.values()), [n for n, g in trained.items()
                                                           if g is None]
    assert not model.backbone.model.embeddings.mask_token.grad.any()
    assert model.backbone.model.training


@pytest.mark.parametrize("train_first", [True, False])
def test_a_backbone_unfrozen_after_building_trains(train_first):
    """Was: `requires_grad_(True)` on the built backbone gave its parameters no gradient (the
    encoder had been told it was frozen once, at build time): an optimizer skipped them."""
    model = Spool(tiny_config())
    if train_first:
        model.train()
    model.backbone.requires_grad_(True)
    model.train()
    model(torch.rand(1, 3, 32, 32, 3)).context.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.model.")]
    assert grads and all(g is not None for g in grads)
    assert model.backbone.model.training
    model.backbone.requires_grad_(False)  # frozen again: eval mode, no gradients
    model.zero_grad(set_to_none=True)
    model(torch.rand(1, 3, 32, 32, 3)).context.sum().backward()
    assert not model.backbone.model.training
    assert all(p.grad is None for p in model.backbone.parameters())


def test_save_load_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Spool.from_pretrained(tmp_path).eval()
    video = torch.randint(0, 256, (2, 5, 40, 30, 3), dtype=torch.uint8)
    with torch.no_grad():
        a, b = tiny_model(video), loaded(video)
    assert torch.equal(a.features, b.features) and torch.equal(a.context, b.context)
    temporal_only = Spool.from_pretrained(tmp_path, with_backbone=False).eval()
    tokens = tiny_model.encode_frames(video)
    with torch.no_grad():
        assert torch.equal(temporal_only.forward_tokens(tokens).features, a.features)


def test_loading_draws_no_initial_weights(tmp_path, monkeypatch) -> None:
    """from_pretrained drew every weight of the temporal stack at random (truncated normals:
    85% of a load's time) and then overwrote each one with the checkpoint's; a new head is
    still drawn."""
    from spool import SpoolForVideoClassification

    Spool(tiny_config(num_hidden_layers=2)).save_pretrained(tmp_path / "m")
    drawn, draw = [], torch.nn.init.trunc_normal_
    monkeypatch.setattr(torch.nn.init, "trunc_normal_",
                        lambda t, *a, **k: (drawn.append(tuple(t.shape)), draw(t, *a, **k))[1])
    loaded = Spool.from_pretrained(tmp_path / "m")
    assert drawn == []
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), Spool
               .from_pretrained(tmp_path / "m").state_dict().values(), strict=True))
    head = SpoolForVideoClassification.from_pretrained(tmp_path / "m", class_names=["a", "b"])
    assert tuple(head.classifier.weight.shape) in drawn
    assert 0 < float(head.classifier.weight.detach().std()) < 0.1


def test_load_with_mismatched_shapes_names_the_tensor(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mlp_ratio"] = 2.0
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"temporal\.layers\.0\.mlp\.fc1\.weight"):
        Spool.from_pretrained(tmp_path)


def test_cached_tokens_entry_point_matches_video_path(tiny_model):
    video = torch.rand(2, 4, 32, 32, 3)
    with torch.no_grad():
        tokens = tiny_model.encode_frames(video)
        torch.testing.assert_close(tiny_model.forward_tokens(tokens).features,
                                   tiny_model(video).features)


def test_config_round_trip(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    assert SpoolConfig.from_pretrained(tmp_path) == config


def test_a_model_saved_without_a_backbone_loads_with_with_backbone_false(tmp_path):
    """Its config has no backbone_config: the error said to save it with save_pretrained, which
    is how it had been saved; it now says with_backbone=False, which loads it."""
    from spool.models.pretrained import SpoolLoadError

    config = tiny_config(backbone_config=None, hidden_size=24, num_spatial_tokens=5)
    model = Spool(config, with_backbone=False).eval()
    model.save_pretrained(tmp_path)
    with pytest.raises(SpoolLoadError, match="with_backbone=False"):
        Spool.from_pretrained(tmp_path)
    loaded = Spool.from_pretrained(tmp_path, with_backbone=False).eval()
    tokens = torch.randn(1, 3, 5, 24)
    with torch.no_grad():
        assert torch.equal(loaded.forward_tokens(tokens).features,
                           model.forward_tokens(tokens).features)


def test_a_block_in_training_is_the_spec_formula_with_its_two_dropouts():
    """SPEC §4: x = x + drop(attn(norm1(x))), x = x + drop(mlp(norm2(x))), MLP = Linear, GELU,
    Linear. The MLP dropped out between its GELU and second Linear too (timm's Mlp), a third
    dropout the formula does not have."""
    import torch.nn.functional as F

    from spool.layers.transformer import TemporalBlock

    config = tiny_config(hidden_size=16, num_spatial_tokens=3, hidden_dropout=0.5)
    block = TemporalBlock(config).train()
    x = torch.randn(2, 5, 3, 16)
    torch.manual_seed(7)
    got = block(x)
    torch.manual_seed(7)
    h = x + F.dropout(block.attn(block.norm1(x)), 0.5, training=True)
    mlp = block.mlp
    want = h + F.dropout(mlp.fc2(F.gelu(mlp.fc1(block.norm2(h)))), 0.5, training=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_context_frames_are_the_start_and_end_parameters_at_the_boundaries():
    """Frame 0 is the learnt ``start`` frame and frame T+1 the ``end`` one (a checkpoint's
    ``start`` must not turn up at the end), both shared over the batch, initialised as SPEC
    §4 says: truncated normal of std 0.02 (cut at two std, so a spread of 0.88 * 0.02)."""
    from spool.layers.context import ContextFrames

    frames = ContextFrames(num_tokens=200, hidden_size=500)
    tokens = torch.randn(3, 4, 200, 500)
    out = frames(tokens)
    assert out.shape == (3, 6, 200, 500)
    for b in range(3):
        assert torch.equal(out[b, 0], frames.start) and torch.equal(out[b, -1], frames.end)
        assert torch.equal(out[b, 1:-1], tokens[b])
    for param in (frames.start, frames.end):
        assert param.abs().max() <= 0.04
        assert abs(param.std().item() - 0.88 * 0.02) < 0.001


def test_loads_in_threads_leave_torch_nn_init_working(tmp_path) -> None:
    """transformers' no_init_weights swaps torch.nn.init's functions process-wide and puts
    back what it found: loads in several threads at once left them switched off for good
    (every model built afterwards held uninitialised memory; a std of 8.5e+32)."""
    import threading

    Spool(tiny_config(num_hidden_layers=4)).save_pretrained(tmp_path)
    real = torch.nn.init.trunc_normal_
    threads = [threading.Thread(target=Spool.from_pretrained, args=(tmp_path,))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.nn.init.trunc_normal_ is real
    assert 0 < float(Spool(tiny_config()).context_frames.start.detach().std()) < 0.05
