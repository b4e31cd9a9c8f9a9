"""The traced training forward (pipeline/core/traced.py) against forward-mode dual tensors, in
float64: the same outputs and gradients, the same tangents, one batch-norm update, dropout's
masks drawn once for primal and tangent; what it keeps for the backward is exactly what a plain
forward keeps; models that do not trace, or draw random numbers it cannot replay, take the
dual tensors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.meta import forward_with_tangent
from pipeline.core.traced import (
    forward_for_tangents_later,
    forward_with_tangent_traced,
    traced,
)
from pipeline.models import build_model


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


class Mixed(nn.Module):
    """Ops without a rule of their own: a parameter read in the forward, GELU, LayerNorm, a
    transpose, a concatenation of two branches, max pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.scale = nn.Parameter(torch.randn(3, 1, 1))
        self.head = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x):
        h = F.gelu(self.conv(x)) * self.scale
        h = self.norm(h).transpose(2, 3)
        h = torch.cat([h, torch.tanh(h)], dim=1)
        return self.head(F.max_pool2d(h, 2).flatten(1))


class Reshaped(nn.Module):
    """A convolution's output reshaped by its own size (a number, not a tensor) for the head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        h = self.conv(x)
        return self.head(h.view(h.size(0), -1))


class TiedInReverse(nn.Module):
    """A weight tied between two layers, the one registered first called second (the graph
    names it by call order) or not at all (the graph has only the other name)."""

    def __init__(self, call_first: bool):
        super().__init__()
        self.first = nn.Linear(6, 6, bias=False)
        self.second = nn.Linear(6, 6, bias=False)
        self.second.weight = self.first.weight
        self.head = nn.Linear(6, 4)
        self.call_first = call_first

    def forward(self, x):
        h = torch.tanh(self.second(x))
        return self.head(self.first(h) if self.call_first else h)


class Shifted(nn.Module):
    """A parameter added to the input, whose tangent alone is the sum's (broadcast as the
    primal is), and a reshape called by keywords only."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.randn(3))
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(torch.tanh(torch.flatten(input=x + self.shift, start_dim=1)))


STUDENTS = {  # name -> (model, input shape)
    "mlp_dropout": (
        lambda: build_model("mlp", (1, 6, 6), 4, hidden=[16, 8], dropout=0.3),
        (1, 6, 6),
    ),
    "lenet": (lambda: build_model("lenet", (1, 16, 16), 4), (1, 16, 16)),
    "resnet": (lambda: build_model("preact_resnet", (3, 8, 8), 4, depth=8, width=4), (3, 8, 8)),
    "wrn_dropout": (
        lambda: build_model("wrn", (3, 8, 8), 4, depth=10, widen=1, dropout=0.3),
        (3, 8, 8),
    ),
    "mixed": (Mixed, (2, 8, 8)),
    "reshaped": (Reshaped, (2, 8, 8)),
    "tied_called_in_reverse": (lambda: TiedInReverse(call_first=True), (6,)),
    "tied_first_never_called": (lambda: TiedInReverse(call_first=False), (6,)),
    "shifted": (Shifted, (2, 3)),
    "conv1d_norms": (  # batch norm over (N, C, L) without running statistics, over (N, C)
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, padding=1),
            nn.BatchNorm1d(4, track_running_stats=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32, 6),
            nn.BatchNorm1d(6),
            nn.Linear(6, 4),
        ),
        (2, 8),
    ),
}


def recorded_then_replayed(model, x, direction, head):
    """The traced forward that records, then its tangents along `direction` (MWN's order)."""
    logits, tangent_of = forward_for_tangents_later(model, x)
    return head(logits), tangent_of(direction, head)


def all_passes(name: str, train: bool):
    """(outputs, tangents, parameter gradients, buffers) of the dual-tensor pass, the traced
    pass and the recorded-then-replayed traced pass, on copies of one model, from the same
    random state."""
    make, shape = STUDENTS[name]
    torch.manual_seed(0)
    model = make().train(train)
    x, y = torch.randn(6, *shape), torch.randint(0, 4, (6,))
    direction = {k: torch.randn_like(p) for k, p in model.named_parameters()}

    def head(out):
        return F.cross_entropy(out, y, reduction="none")

    found = []
    for forward in (forward_with_tangent, forward_with_tangent_traced, recorded_then_replayed):
        copy_ = copy.deepcopy(model)
        torch.manual_seed(1)  # dropout's masks
        losses, tangent = forward(copy_, x, direction, head)
        grads = torch.autograd.grad(losses.sum(), list(copy_.parameters()))
        found.append((losses, tangent, grads, [b.clone() for b in copy_.buffers()]))
    return found


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(STUDENTS))
def test_traced_passes_equal_dual_tensors(name, train):
    dual, *traced_passes = all_passes(name, train)
    assert traced(STUDENTS[name][0]()) is not None  # every student here traces
    for fast in traced_passes:
        assert_same_pass(fast, dual)


def assert_same_pass(fast, dual):
    torch.testing.assert_close(fast[0], dual[0], rtol=1e-12, atol=1e-14)  # same masks too
    assert fast[1].abs().max() > 0
    torch.testing.assert_close(fast[1], dual[1], rtol=1e-10, atol=1e-12)
    for a, b in zip(fast[2], dual[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(fast[3], dual[3], strict=True):  # one batch-norm update, as the real step
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def saved_bytes(run) -> int:
    """Bytes of the tensors autograd saves for the backward while `run` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total[0]


def test_the_recording_keeps_what_the_tangent_rules_read():
    """The recording forward (Meta-Weight-Net's) keeps the primals a rule reads and no others:
    the head's input, not the convolution's output, which only a reshape reads."""
    from pipeline.core.traced import _Interpreter

    graph, fixed = traced(Reshaped())
    recorded: dict = {}
    _Interpreter(graph, {}, recorded).run(torch.randn(5, 2, 8, 8), *fixed.values())
    assert {n.name for n in recorded if isinstance(n, torch.fx.Node)} == {"view"}


def test_traced_pass_keeps_for_the_backward_what_a_plain_forward_keeps():
    """No tangent reaches the backward graph (the dual-tensor pass keeps more), and the
    recording forward adds nothing to it."""
    torch.manual_seed(0)
    model = build_model("preact_resnet", (3, 8, 8), 4, depth=8, width=4)
    x = torch.randn(6, 3, 8, 8)
    direction = {k: torch.randn_like(p) for k, p in model.named_parameters()}
    plain = saved_bytes(lambda: model(x))
    assert saved_bytes(lambda: forward_with_tangent_traced(model, x, direction)) == plain
    assert saved_bytes(lambda: forward_for_tangents_later(model, x)) == plain
    assert saved_bytes(lambda: forward_with_tangent(model, x, direction)) > 1.5 * plain


class Branching(nn.Module):
    """Control flow on a tensor's value: does not trace."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class FunctionalDropout(nn.Module):
    """Draws its mask in a function: a recomputed tangent would draw another."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(F.dropout(x, 0.5, self.training))


class InPlace(nn.Module):
    """Works in place: a recomputed tangent would apply each op twice."""

    def __init__(self, how: str):
        super().__init__()
        self.fc, self.how = nn.Linear(5, 3), how
        self.act = nn.LeakyReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        if self.how == "method":
            h.add_(x[:, :3])
        return self.act(h) if self.how == "module" else h


class RandomActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(5, 3), nn.RReLU()

    def forward(self, x):
        return self.act(self.fc(x))


CANNOT = {
    "branching": Branching,
    "functional_dropout": FunctionalDropout,
    "rrelu": RandomActivation,
    "add_": lambda: InPlace("method"),
    "inplace_module": lambda: InPlace("module"),
}


@pytest.mark.parametrize("name", list(CANNOT))
def test_models_it_cannot_run_take_the_dual_tensors(name):
    make = CANNOT[name]
    torch.manual_seed(0)
    model = make()
    assert traced(model) is None
    x = torch.randn(4, 5).abs()
    direction = {k: torch.randn_like(p) for k, p in model.named_parameters()}
    torch.manual_seed(1)
    expected = forward_with_tangent(model, x, direction)
    torch.manual_seed(1)
    found = forward_with_tangent_traced(model, x, direction)
    for a, b in zip(found, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class Tied(nn.Module):
    """Two layers sharing one weight, a forward that branches on train / eval mode."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 3)
        self.c = nn.Linear(5, 5)
        self.c.weight = self.a.weight

    def forward(self, x):
        h = torch.tanh(self.c(torch.tanh(self.a(x))))
        return self.b(h if self.training else 2 * h)


def test_tied_weights_and_a_mode_branch_trace_exactly():
    """One model, traced in train mode and then in eval mode (its forward branches on it)."""
    torch.manual_seed(0)
    model = Tied()
    x = torch.randn(4, 5)
    direction = {k: torch.randn_like(p) for k, p in model.named_parameters()}
    for train in (True, False):
        model.train(train)
        assert traced(model) is not None
        expected = forward_with_tangent(model, x, direction)
        found = forward_with_tangent_traced(model, x, direction)
        for a, b in zip(found, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


class Gated(nn.Module):
    """A gated linear unit by chunk: a node returning two tensors."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 6)

    def forward(self, x):
        a, b = self.fc(x).chunk(2, dim=1)
        return a * torch.sigmoid(b)


def test_a_node_returning_several_tensors_is_a_clear_error():
    model = Gated()
    direction = {k: torch.randn_like(p) for k, p in model.named_parameters()}
    with pytest.raises(TypeError, match="jvp_fused"):
        forward_with_tangent_traced(model, torch.randn(4, 5), direction)
