"""The plain-torch DenseNet121 has torchvision's exact state_dict (names, order, shapes)."""

from __future__ import annotations

import pytest

from conftest import SHARED

torch = pytest.importorskip("torch")

from informer_audit.densenet import DenseNet, densenet121  # noqa: E402

pytestmark = pytest.mark.torch

REF_WEIGHTS = SHARED / "models" / "densenet121-nih5-128.pt"


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def torchvision_densenet121_state(k: int, in_channels: int = 3) -> list[tuple[str, tuple]]:
    """torchvision's densenet121 state_dict (name, shape), written out from its documented
    architecture: growth 32, blocks (6, 12, 24, 16), bottleneck 4 x growth, 64 initial
    features, transitions halving the channels, BatchNorm ``norm5``, Linear ``classifier``."""
    growth, bottleneck = 32, 4 * 32
    state = [("features.conv0.weight", (64, in_channels, 7, 7)), *_bn("features.norm0", 64)]
    c = 64
    for b, n_layers in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, n_layers + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            c_in = c + (i - 1) * growth
            state += _bn(f"{p}.norm1", c_in)
            state.append((f"{p}.conv1.weight", (bottleneck, c_in, 1, 1)))
            state += _bn(f"{p}.norm2", bottleneck)
            state.append((f"{p}.conv2.weight", (growth, bottleneck, 3, 3)))
        c += n_layers * growth
        if b < 4:
            p = f"features.transition{b}"
            state += _bn(f"{p}.norm", c)
            state.append((f"{p}.conv.weight", (c // 2, c, 1, 1)))
            c //= 2
    state += _bn("features.norm5", c)
    state += [("classifier.weight", (k, c)), ("classifier.bias", (k,))]
    return state


def _state(model) -> list[tuple[str, tuple]]:
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def test_expected_key_list_is_torchvisions():
    # Pins of the written-out list against torchvision's published numbers.
    state = dict(torchvision_densenet121_state(1000))
    assert len(state) == 727
    assert state["features.denseblock4.denselayer16.conv2.weight"] == (32, 128, 3, 3)
    assert state["features.transition3.norm.running_var"] == (1024,)
    assert state["features.transition3.conv.weight"] == (512, 1024, 1, 1)
    assert state["features.norm5.weight"] == (1024,)
    assert state["classifier.weight"] == (1000, 1024)
    assert state["classifier.bias"] == (1000,)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(
        torch.Size(shape).numel() for name, shape in state.items() if not name.endswith(buffers)
    )
    assert n_params == 7_978_856  # torchvision's documented parameter count of densenet121


@pytest.mark.parametrize("k, channels", [(5, 3), (14, 3), (2, 1)])
def test_state_dict_matches_torchvision_layout(k, channels):
    model = densenet121(k, channels, use_torchvision=False)
    assert isinstance(model, DenseNet)
    assert _state(model) == torchvision_densenet121_state(k, channels)  # names, order, shapes


def test_forward_gives_logits_per_class():
    model = densenet121(3, use_torchvision=False).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 48))
    assert out.shape == (2, 3)


def test_against_torchvision_when_importable():
    try:
        from torchvision.models import densenet121 as tv_densenet121
    except Exception as exc:  # noqa: BLE001 - a mismatched torchvision raises RuntimeError
        pytest.skip(f"torchvision is not importable here ({type(exc).__name__})")
    tv = tv_densenet121(weights=None, num_classes=5).eval()
    ours = densenet121(5, use_torchvision=False).eval()
    assert _state(ours) == _state(tv)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-5)


@pytest.mark.shared
@pytest.mark.skipif(not REF_WEIGHTS.is_file(), reason=f"needs {REF_WEIGHTS} (not present)")
def test_reference_checkpoint_has_our_keys():
    sd = torch.load(REF_WEIGHTS, map_location="cpu", weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == torchvision_densenet121_state(5)
