"""The training forward with its tangent, one pass, the tangents computed outside autograd.

forward_with_tangent (pipeline/core/meta.py) gets J_i d from forward-mode dual tensors. When
the parameters require grad, PyTorch evaluates every tangent rule under autograd and keeps
each intermediate tangent attached to its primal, and the backward graph saves the primals:
the tangents of every saved activation, and the tangent graph's own saved tensors, stay alive
until the backward (3.9x ERM's step memory on the CPU ResNet-32 case; this pass 1.05x,
results/bench/steps_cpu.csv). Here the student is traced once into its graph of modules and
functions (torch.fx), and each node is run twice over: its primal as the student would
(under autograd, real buffers: one batch-norm update), its tangent under no_grad by the
node's linear rule (conv / linear: two terms; batch norm; ReLU: a mask; additions and
reshapes: the same op on the tangents; any other op: a jvp of that op alone). A tangent is
freed after its node's last consumer, as the interpreter frees values, so the pass keeps
about one layer of tangents beside ERM's graph. forward_for_tangents_later splits the two:
the training forward records what the tangent rules read, and the tangents along a
direction known only later are replayed from it (Meta-Weight-Net's order), with no second
forward.

Exact: tests/test_core.py, test_methods.py and test_dir.py hold it to double backward
through the virtual step in float64, tests/test_traced.py to the dual tensors. A model that
does not trace (a Hugging Face or fairseq model), draws random numbers other than
nn.Dropout's or works in place takes the dual-tensor pass.
"""

from __future__ import annotations

import inspect
import operator
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import functional_call, jvp
from torch.fx.node import map_aggregate

from pipeline.core.meta import forward_with_tangent
from pipeline.core.optim import Tensors


class Dual:
    """A node's value: its primal (with its autograd graph) and its tangent (None: zero)."""

    __slots__ = ("primal", "tangent")

    def __init__(self, primal: torch.Tensor, tangent: torch.Tensor | None):
        self.primal, self.tangent = primal, tangent


FOLLOWED = "followed"  # a recording pass's tangent: one that its replay will compute


def _leaves(tree) -> list:
    found: list = []
    map_aggregate(tree, found.append)
    return found


def _primals(tree):
    return map_aggregate(tree, lambda a: a.primal if isinstance(a, Dual) else a)


def _tangent_of(value) -> torch.Tensor | None:
    return value.tangent if isinstance(value, Dual) else None


def _plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a if b is None else b if a is None else a + b


def _apply(target, args, kwargs):
    """Call a node's target: a function, or a method named by a string."""
    if isinstance(target, str):
        return getattr(args[0], target)(*args[1:], **kwargs)
    return target(*args, **kwargs)


def _op_jvp(fn: Callable, args, kwargs) -> torch.Tensor:
    """The tangent of one op by torch.func.jvp at its detached primals (recomputes the op)."""
    duals = [a for a in _leaves((args, kwargs)) if isinstance(a, Dual)]
    primals = tuple(d.primal.detach() for d in duals)
    tangents = tuple(torch.zeros_like(d.primal) if d.tangent is None else d.tangent for d in duals)

    def call(*values):
        it = iter(values)
        swap = lambda a: next(it) if isinstance(a, Dual) else a  # noqa: E731
        return fn(*map_aggregate(args, swap), **map_aggregate(kwargs, swap))

    return jvp(call, primals, tangents)[1]


# Module rules: (module, detached input, its tangent or None, tangents of the module's own
# parameters) -> the output's tangent. Each is the linearisation of the module's forward.


def _conv_tangent(mod, x, t_x, p):
    t = None if t_x is None else mod._conv_forward(t_x, mod.weight.detach(), None)
    if "weight" in p:
        term = mod._conv_forward(x, p["weight"], p.get("bias"))
        return term if t is None else t.add_(term)
    if "bias" in p:
        t = _plus(t, p["bias"].view(1, -1, *[1] * (x.dim() - 2)))
    return t


def _linear_tangent(mod, x, t_x, p):
    t = None if t_x is None else F.linear(t_x, mod.weight.detach())
    if "weight" in p:
        term = F.linear(x, p["weight"], p.get("bias"))
        return term if t is None else t.add_(term)
    return _plus(t, p.get("bias"))


def _batch_norm_tangent(mod, x, t_x, p):
    """y = gamma x_hat + beta: t_y = gamma t_x_hat + t_gamma x_hat + t_beta, where with batch
    statistics t_x_hat = inv_std (t_x - mean(t_x) - x_hat mean(t_x x_hat)), per channel."""
    dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
    batch_stats = mod.training or not mod.track_running_stats
    if batch_stats:  # x_hat and the batch's 1 / std in one kernel (no statistics updated)
        x_hat, _, inv_std = torch.native_batch_norm(x, None, None, None, None, True, 0.0, mod.eps)
    else:
        inv_std = torch.rsqrt(mod.running_var + mod.eps)
        x_hat = (x - mod.running_mean.view(shape)) * inv_std.view(shape)
    gamma = inv_std if mod.weight is None else inv_std * mod.weight.detach()
    t_beta = p.get("bias", torch.zeros_like(gamma))
    scale = x_hat.new_zeros(gamma.shape) if "weight" not in p else p["weight"]
    if t_x is None:
        return torch.addcmul(t_beta.view(shape), x_hat, scale.view(shape))
    if batch_stats:  # the batch's mean and variance move with the input
        t_beta = t_beta - gamma * t_x.mean(dims)
        scale = scale - gamma * (t_x * x_hat).mean(dims)
    t = torch.addcmul(t_beta.view(shape), t_x, gamma.view(shape))
    return t.addcmul_(x_hat, scale.view(shape))


MODULE_RULES = {
    nn.Conv1d: _conv_tangent,
    nn.Conv2d: _conv_tangent,
    nn.Linear: _linear_tangent,
    nn.BatchNorm1d: _batch_norm_tangent,
    nn.BatchNorm2d: _batch_norm_tangent,
}
LINEAR_METHODS = {"flatten", "view", "reshape", "mean", "sum", "transpose", "permute"}
LINEAR_FUNCTIONS = {torch.flatten, torch.mean, torch.sum}


class _Interpreter(fx.Interpreter):
    """Runs a traced student on Dual values (the interpreter frees each after its last use).

    With `recorded` (a dict) the run records and computes no tangent: every parameter's
    tangent is FOLLOWED, and each rule, where it would run, records the primals it reads
    (`_reads_inputs`, `_reads_output`); the dropout masks and the values that are not tensors
    are recorded too. With `replay` as well the run takes them from there and computes the
    tangents alone (a primal no rule reads is None)."""

    def __init__(
        self,
        graph_module: fx.GraphModule,
        direction: Tensors,
        recorded: dict | None = None,
        replay: bool = False,
    ):
        super().__init__(graph_module)
        self.direction, self.recorded, self.replay = direction, recorded, replay
        self.recording = recorded is not None and not replay
        named = graph_module.named_parameters(remove_duplicate=False)  # tied: every name
        self.parameters = {name for name, _ in named} if self.recording else set()
        self.node: fx.Node | None = None

    def run_node(self, n: fx.Node):
        self.node = n
        if self.replay and ("value", n) in self.recorded:
            return self.recorded[("value", n)]
        value = super().run_node(n)
        if self.recording and isinstance(value, Dual):
            self.recorded[("shape", n)] = value.primal.shape  # for a replay that keeps no primal
        elif self.recording and n.op.startswith("call"):
            self.recorded[("value", n)] = value
        return value

    def _reads_inputs(self) -> None:
        """The running node's tangent rule reads its inputs' primals: record them."""
        if self.recording:
            for m in _leaves((self.node.args, self.node.kwargs)):
                value = self.env.get(m) if isinstance(m, fx.Node) else None
                if isinstance(value, Dual):
                    self.recorded[m] = value.primal.detach()

    def _reads_output(self, out: torch.Tensor) -> None:
        """The running node's tangent rule reads its own primal (ReLU's mask): record it."""
        if self.recording:
            self.recorded[self.node] = out.detach()

    def _primal(self, compute: Callable[[], torch.Tensor]):
        """The node's primal: computed, or the recorded one when replaying."""
        return self.recorded.get(self.node) if self.replay else compute()

    def _tangent(self, out: torch.Tensor, compute: Callable[[], torch.Tensor]):
        """The tangent of the node's output `out`, outside autograd (FOLLOWED while recording),
        in out's shape: a tangent from a bias alone is broadcast as the primal was."""
        if self.recording:
            return FOLLOWED
        with torch.no_grad():
            tangent = compute()
        shape = self.recorded[("shape", self.node)] if out is None else out.shape
        return tangent if tangent.shape == shape else tangent.expand(shape)

    def _direction(self, name: str):
        """The direction's tangent of a parameter (while recording: every one is followed)."""
        if self.recording:
            return FOLLOWED if name in self.parameters else None
        return self.direction.get(name)

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        p = {name: self._direction(f"{target}.{name}") for name, _ in mod.named_parameters()}
        p = {name: tangent for name, tangent in p.items() if tangent is not None}
        primal_args, primal_kwargs = _primals(args), _primals(kwargs)
        if type(mod) is nn.Dropout and mod.training and 0 < mod.p < 1:
            return self._dropout(mod.p, primal_args[0], _tangent_of(args[0]))
        if type(mod) is nn.Dropout and (mod.p == 0 or not mod.training):  # the identity
            return Dual(self._primal(lambda: mod(primal_args[0])), _tangent_of(args[0]))
        if type(mod) is nn.ReLU:
            return self._call(F.relu, args, {})
        out = self._primal(lambda: mod(*primal_args, **primal_kwargs))
        if not self.replay and not isinstance(out, torch.Tensor):
            raise TypeError(
                f"route jvp_traced: module {target} returns a {type(out).__name__}, not a "
                "tensor; use route jvp_fused for this model"
            )
        tangents = [_tangent_of(a) for a in _leaves((args, kwargs))]
        if not p and all(t is None for t in tangents):
            return Dual(out, None)
        self._reads_inputs()
        rule = MODULE_RULES.get(type(mod))
        if rule is not None and len(args) == 1 and not kwargs:
            return Dual(
                out, self._tangent(out, lambda: rule(mod, primal_args[0].detach(), tangents[0], p))
            )
        return Dual(out, self._tangent(out, lambda: self._module_jvp(target, mod, args, kwargs)))

    def _dropout(self, rate: float, x: torch.Tensor, t_x: torch.Tensor | None) -> Dual:
        # The mask drawn as the CPU's dropout draws it, and applied to primal and tangent.
        key = ("mask", self.node)
        if self.replay:
            mask = self.recorded[key]
        else:
            mask = torch.empty_like(x).bernoulli_(1 - rate).div_(1 - rate)
            if self.recorded is not None:
                self.recorded[key] = mask
        out = self._primal(lambda: x * mask)
        return Dual(out, None if t_x is None else self._tangent(out, lambda: t_x * mask))

    def _module_jvp(self, target: str, mod: nn.Module, args, kwargs) -> torch.Tensor:
        """A module without a rule: jvp in its inputs and parameters, on buffer copies."""
        buffers = {n: b.clone() for n, b in mod.named_buffers()}
        theta = {n: Dual(q, self._direction(f"{target}.{n}")) for n, q in mod.named_parameters()}

        def call(*inputs, module_parameters, **options):
            return functional_call(mod, (module_parameters, buffers), inputs, options)

        return _op_jvp(call, args, {**kwargs, "module_parameters": theta})

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)  # a parameter read in a forward
        return Dual(value, self._direction(target)) if isinstance(value, torch.Tensor) else value

    def call_function(self, target, args, kwargs):
        return self._call(target, args, kwargs)

    call_method = call_function  # a method named by a string: _apply calls it

    def _call(self, target, args, kwargs):
        out = self._primal(lambda: _apply(target, _primals(args), _primals(kwargs)))
        if not self.replay and not isinstance(out, torch.Tensor):
            if any(isinstance(o, torch.Tensor) for o in _leaves(out)):
                raise TypeError(
                    f"route jvp_traced: {target} returns several tensors (their tangents are "
                    "not followed); use route jvp_fused for this model"
                )
            return out  # shape arithmetic, asserts (recorded as they are)
        if all(_tangent_of(a) is None for a in _leaves((args, kwargs))):
            return Dual(out, None)
        return Dual(out, self._tangent(out, self._function_rule(target, args, kwargs, out)))

    def _function_rule(self, target, args, kwargs, out) -> Callable[[], torch.Tensor]:
        """The tangent rule of a function's node, having recorded the primals it reads."""
        if target in (F.relu, torch.relu, "relu") and args:
            self._reads_output(out)
            return lambda: torch.ops.aten.threshold_backward(args[0].tangent, out, 0)
        if target in (operator.add, torch.add, "add") and not kwargs:
            return lambda: _plus(_tangent_of(args[0]), _tangent_of(args[1]))
        if (target in LINEAR_METHODS or target in LINEAR_FUNCTIONS) and args:  # not kwargs-only
            first, *rest = args
            if _tangent_of(first) is not None and not any(isinstance(a, Dual) for a in rest):
                return lambda: _apply(target, [first.tangent, *rest], kwargs)
        self._reads_inputs()
        return lambda: _op_jvp(lambda *a, **k: _apply(target, a, k), args, kwargs)


_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
RANDOM = ("dropout", "rand", "bernoulli", "normal", "multinomial", "uniform", "poisson")
RANDOM += ("rrelu", "gumbel", "exponential", "cauchy", "geometric")


def _unsupported(graph: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the interpreter cannot run a node exactly: a random op but nn.Dropout (whose
    mask it draws once for primal and tangent; a recomputed tangent would draw anew), or an
    in-place op (a recomputed tangent would apply it twice)."""
    if node.op == "call_module":
        mod = graph.get_submodule(node.target)
        random = isinstance(mod, (nn.modules.dropout._DropoutNd, nn.RReLU))
        return (random and type(mod) is not nn.Dropout) or getattr(mod, "inplace", False)
    if node.op not in ("call_function", "call_method"):
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    in_place = name.endswith("_") and not name.startswith("_") or node.kwargs.get("inplace")
    return bool(in_place) or any(r in name for r in RANDOM)


def traced(model: nn.Module) -> tuple[fx.GraphModule, dict] | None:
    """The model's graph for its logits in its current mode (train or eval: a forward may
    branch on it) and the arguments fixed in tracing (a student network's `states` flag, as
    False), traced once per mode (the graph shares the model's modules); None when it does
    not trace, draws random numbers other than nn.Dropout's or works in place."""
    traces = _TRACES.setdefault(model, {})
    if model.training not in traces:
        parameters = inspect.signature(model.forward).parameters
        fixed = {"states": False} if "states" in parameters else {}
        try:
            graph = fx.symbolic_trace(model, concrete_args=fixed or None)
        except Exception:  # noqa: BLE001 - a model that does not trace takes dual tensors
            graph = None
        if graph is not None and any(_unsupported(graph, n) for n in graph.graph.nodes):
            graph = None
        traces[model.training] = None if graph is None else (graph, fixed)
    return traces[model.training]


def _with_aliases(model: nn.Module, graph: fx.GraphModule, direction: Tensors) -> Tensors:
    """The direction (by the model's names) under every name the graph reads a parameter by:
    a tied parameter's graph name may be one the model's de-duplicated names do not give."""
    every_name = model.named_parameters(remove_duplicate=False)
    ids = {id(p): direction[n] for n, p in every_name if n in direction}
    every = graph.named_parameters(remove_duplicate=False)
    return {n: ids[id(p)] for n, p in every if id(p) in ids}


def _head_tangent(head, out: torch.Tensor, tangent: torch.Tensor | None) -> torch.Tensor:
    """The tangent of head(out) by a jvp of the head alone."""
    tangent = torch.zeros_like(out) if tangent is None else tangent
    with torch.no_grad():
        return jvp(head, (out.detach(),), (tangent,))[1]


def _output(value) -> Dual:
    if not isinstance(value, Dual):
        raise TypeError("route jvp_traced: the model must return one tensor")
    return value


def forward_with_tangent_traced(
    model: nn.Module,
    x: torch.Tensor,
    direction: Tensors,
    head: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
) -> tuple[torch.Tensor, torch.Tensor]:
    """forward_with_tangent by the traced graph (see the module's docstring): head(model(x))
    with its autograd graph, and its tangent along `direction`. A model that does not trace
    takes the dual tensors."""
    trace = traced(model)
    if trace is None:
        return forward_with_tangent(model, x, direction, head)
    graph, fixed = trace
    out = _output(
        _Interpreter(graph, _with_aliases(model, graph, direction)).run(x, *fixed.values())
    )
    return head(out.primal), _head_tangent(head, out.primal, out.tangent)


def forward_for_tangents_later(model: nn.Module, x: torch.Tensor):
    """model(x) with its autograd graph, and a function giving the tangent of head(model(x))
    along a direction known only later (Meta-Weight-Net's, which needs this forward's
    gradient first): from the primals and dropout masks this forward recorded, with no second
    forward (the same masks and batch statistics). None for a model that does not trace."""
    trace = traced(model)
    if trace is None:
        return None
    graph, fixed = trace
    recorded: dict = {}
    out = _output(_Interpreter(graph, {}, recorded).run(x, *fixed.values()))

    def tangent(direction: Tensors, head=lambda out: out) -> torch.Tensor:
        aliased = _with_aliases(model, graph, direction)
        replay = _Interpreter(graph, aliased, recorded, replay=True)
        with torch.no_grad():
            found = _output(replay.run(x, *fixed.values()))
        return _head_tangent(head, out.primal, found.tangent)

    return out.primal, tangent
