"""The student networks: shapes, the shared features/classifier interface, parameter counts,
option checking, determinism, and forward-mode differentiation (which needs no in-place ops)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jvp

from pipeline.models import ARCHITECTURES, build_model, count_parameters

# torch scripts its jvp decompositions on first use and warns about its own torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

SMALL = {
    "mlp": {"hidden": [32, 16]},
    "lenet": {},
    "preact_resnet": {"depth": 8, "width": 4},
    "wrn": {"depth": 10, "widen": 1, "dropout": 0.3},
}
CASES = [(arch, shape) for arch in SMALL for shape in [(1, 28, 28), (3, 32, 32)]]
CASES += [("mlp", (2,)), ("mlp", (1, 8, 8)), ("preact_resnet", (1, 8, 8))]


@pytest.mark.parametrize("arch,shape", CASES)
def test_shapes_and_interface(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, shape, 7, **SMALL[arch]).eval()
    x = torch.randn(3, *shape)
    logits = model(x)
    assert logits.shape == (3, 7)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim)
    assert torch.equal(logits, model.classifier(feats))
    maps = model.feature_maps(x)
    assert maps and all(m.dim() == 2 and m.shape[0] == 3 for m in maps)
    both, maps2 = model.features_and_maps(x)
    assert torch.equal(both, feats) and all(map(torch.equal, maps, maps2))


def test_feature_map_widths():
    x = torch.randn(2, 3, 32, 32)
    resnet = build_model("preact_resnet", (3, 32, 32), 10, depth=8, width=4)
    assert [m.shape[1] for m in resnet.feature_maps(x)] == [16, 8, 4]
    lenet = build_model("lenet", (3, 32, 32), 10)
    assert [m.shape[1] for m in lenet.feature_maps(x)] == [120, 16, 6]
    mlp = build_model("mlp", (3, 32, 32), 10, hidden=(64, 32, 16))
    assert [m.shape[1] for m in mlp.feature_maps(x)] == [32, 64]


def test_parameter_counts():
    resnet32 = build_model("preact_resnet", (3, 32, 32), 10, depth=32)
    assert count_parameters(resnet32) == pytest.approx(0.46e6, rel=0.03)
    wrn = build_model("wrn", (3, 32, 32), 10, depth=28, widen=10, dropout=0.3)
    assert count_parameters(wrn) == pytest.approx(36.5e6, rel=0.03)
    assert wrn.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "arch,shape,options,message",
    [
        ("preact_resnet", (3, 32, 32), {"depth": 30}, "6n+2"),
        ("wrn", (3, 32, 32), {"depth": 26}, "6n+4"),
        ("resnet", (3, 32, 32), {}, "unknown arch 'resnet'; known: mlp, lenet, preact_resnet, wrn"),
        ("mlp", (2,), {"widht": 3}, "options.widht: unknown key (known: dropout, hidden)"),
        ("preact_resnet", (3, 32, 32), {"depth": 8, "in_channels": 1}, "set from the data"),
        ("preact_resnet", (3, 32, 32), {}, "options.depth: required"),
        ("lenet", (2,), {}, "needs image inputs"),
        ("lenet", (1, 8, 8), {}, "at least 12x12"),
    ],
)
def test_bad_builds_explain_themselves(arch, shape, options, message):
    with pytest.raises(ValueError) as info:
        build_model(arch, shape, 10, **options)
    assert message in str(info.value)


def test_registry_matches_the_config_literal():
    assert list(ARCHITECTURES) == ["mlp", "lenet", "preact_resnet", "wrn"]


@pytest.mark.parametrize("arch", list(SMALL))
def test_same_seed_same_parameters(arch):
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(build_model(arch, (3, 32, 32), 10, **SMALL[arch]))
    a, b = (m.state_dict() for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_jvp_matches_finite_difference_in_train_mode():
    """Forward-mode derivative along a joint (parameters, input) direction, BatchNorm using batch
    statistics, against a central difference; an in-place op would break or corrupt the jvp."""
    torch.manual_seed(0)
    model = build_model("preact_resnet", (3, 16, 16), 5, depth=8, width=4).double().train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    dp = {k: torch.randn_like(v) for k, v in params.items()}
    dx = torch.randn_like(x)

    def f(p, inp):
        # Fresh buffer copies each call, so the running-stat updates never leak between calls.
        return functional_call(model, (p, {k: v.clone() for k, v in buffers.items()}), (inp,))

    out, tangent = jvp(f, (params, x), (dp, dx))
    assert torch.allclose(out, f(params, x))

    def shifted(eps):
        return f({k: v + eps * dp[k] for k, v in params.items()}, x + eps * dx)

    eps = 1e-6
    fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
    assert ((tangent - fd).norm() / tangent.norm()).item() < 1e-6


def test_forward_ad_dual_input():
    """Dual tensors straight through a train-mode WRN (BatchNorm updating its running stats)
    match torch.func.jvp, which must see the buffers as inputs rather than captured tensors."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    model = build_model("wrn", (1, 8, 8), 3, depth=10).double().train()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    dx = torch.randn_like(x)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(model(fwAD.make_dual(x, dx))).tangent

    def f(inp):
        return functional_call(model, (params, {k: v.clone() for k, v in buffers.items()}), (inp,))

    _, expected = jvp(f, (x,), (dx,))
    assert torch.allclose(tangent, expected)
