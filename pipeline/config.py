"""params.yaml: load, check and turn into frozen dataclasses.

Every section entry becomes a frozen dataclass built by `build`, which rejects unknown keys and
wrong types with the dotted key in the message. Cross-references (an experiment naming a noise
setting that does not exist, say) are checked in `Params.check`. Nothing here imports torch, so
the Snakefile can check params.yaml before any job starts without paying for it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PARAMS_FILE = "params.yaml"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")  # no dots: DVC reads dotted keys as nesting


class ParamsError(ValueError):
    """A problem in params.yaml; the message starts with the dotted key at fault."""


def build(cls: type, data: Any, where: str, **extra: Any):
    """Build dataclass `cls` from a mapping, checking keys and types; `where` is the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init} - set(extra)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**values, **extra)
    except TypeError as e:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values | extra]
        raise ParamsError(f"{where}: missing key {missing[0] if missing else ''} ({e})") from e
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ParamsError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _positive(where: str, **values: float | None) -> None:
    for key, value in values.items():
        if value is not None and value <= 0:
            raise ParamsError(f"{where}.{key}: must be positive, got {value}")


@dataclass(frozen=True)
class RunSpec:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 1
    cpu_numerics: Literal["portable", "fast"] = "portable"  # see pipeline/numerics.py

    def check(self, where: str) -> None:
        _positive(where, threads=self.threads)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from. test_size: carve a test split (sources without one)."""

    source: str  # a loader of pipeline/data/sources.py SOURCES
    test_size: int | None = None
    size: int = 2000  # two moons: number of points
    noise: float = 0.1  # two moons: Gaussian noise of the points
    download: bool = False  # opt-in download (torchvision sets, GLUE)
    max_length: int = 64  # text: tokens per example (truncated, padded)
    root: str | None = None  # where the source's files are; None: the source's default

    def check(self, where: str) -> None:
        from pipeline.data.sources import SOURCES  # it imports this module

        if self.source not in SOURCES:
            raise ParamsError(
                f"{where}.source: unknown source {self.source!r} (known: {', '.join(SOURCES)})"
            )
        _positive(where, test_size=self.test_size, size=self.size, max_length=self.max_length)


NOISE_FIELDS = {  # kind -> fields it requires beyond the split
    "none": (),
    "uniform": ("rate",),
    "flip_similar": ("rate",),
    "background": ("rate",),
    "imbalance": ("classes", "majority_fraction", "train_size"),
    "few_labels": ("labels",),
}


@dataclass(frozen=True)
class NoiseSpec:
    """A split and a label corruption of the training part (see pipeline/noise.py).

    uniform: each label is replaced with prob. `rate` by a uniformly drawn *other* class.
    flip_similar: each class gets two random "similar" classes; a label flips with prob. `rate`,
        half to each (deep-interactions paper, section 4.4).
    background: a label flips with prob. `rate` to one background class, `background` or drawn
        from the seed (L2RW section 4.2).
    imbalance: binary task on `classes` (the second is the majority) with `train_size` training
        examples of which `majority_fraction` are the majority (L2RW section 4.1).
    few_labels: `labels` labelled training examples (class-balanced), the rest unlabelled (MPL).
    train_size (other kinds): keep a random subset of that many training examples.
    """

    kind: Literal[tuple(NOISE_FIELDS)]  # type: ignore[valid-type]
    rate: float | None = None
    val_size: int | None = None
    val_per_class: int | None = None
    background: int | None = None
    classes: tuple[int, ...] | None = None
    majority_fraction: float | None = None
    train_size: int | None = None
    labels: int | None = None

    def check(self, where: str) -> None:
        for key in NOISE_FIELDS[self.kind]:
            if getattr(self, key) is None:
                raise ParamsError(f"{where}.{key}: required for kind {self.kind}")
        if self.rate is not None and not 0 <= self.rate <= 1:
            raise ParamsError(f"{where}.rate: must be in [0, 1], got {self.rate}")
        if self.majority_fraction is not None and not 0.5 <= self.majority_fraction < 1:
            raise ParamsError(f"{where}.majority_fraction: must be in [0.5, 1)")
        if self.classes is not None and len(self.classes) != 2:
            raise ParamsError(f"{where}.classes: the imbalance task takes two classes")
        if self.val_size is not None and self.val_per_class is not None:
            raise ParamsError(f"{where}: give val_size or val_per_class, not both")
        _positive(
            where,
            val_size=self.val_size,
            val_per_class=self.val_per_class,
            train_size=self.train_size,
            labels=self.labels,
        )


@dataclass(frozen=True)
class ModelSpec:
    """An architecture of pipeline/models.py and its options (their names are checked here,
    their values when the model is built)."""

    arch: str  # pipeline/models.py ARCH_NAMES
    options: dict = field(default_factory=dict)

    def check(self, where: str) -> None:
        from pipeline.models import ARCH_NAMES, check_options

        if self.arch not in ARCH_NAMES:
            raise ParamsError(f"{where}.arch: {self.arch!r} is not one of {', '.join(ARCH_NAMES)}")
        try:
            check_options(self.arch, self.options)
        except ValueError as e:
            raise ParamsError(f"{where}: {e}") from None


@dataclass(frozen=True)
class ScheduleSpec:
    """The student's optimiser with step decay: lr *= gamma at each fraction of training in
    milestones. optimizer: sgd (momentum, nesterov), adam (weight_decay as L2 in the
    gradient, as torch.optim.Adam) or adamw (decoupled weight decay); betas and eps: Adam's."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    augment: Literal["none", "crop_flip", "randaugment"] = "none"  # pipeline/augment.py
    val_batch_size: int | None = None  # validation batch for methods that use one; None: batch_size
    eval_every: int = 0  # also record validation figures every this many steps (0: epoch ends)
    # record at each epoch end how well the student fits the training labels it is given
    # (train_acc) and, among the corrupted ones, the fraction it predicts as given (noisy_fit):
    # the check that a baseline memorises the noise (one eval pass over the training split)
    fit_curve: bool = False

    def check(self, where: str) -> None:
        _positive(
            where,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            val_batch_size=self.val_batch_size,
        )
        if self.eval_every < 0:
            raise ParamsError(f"{where}.eval_every: must be >= 0 (0: at epoch ends only)")
        if len(self.betas) != 2 or any(not 0 <= b < 1 for b in self.betas):
            raise ParamsError(f"{where}.betas: two numbers, each in [0, 1)")
        if not self.eps > 0:
            raise ParamsError(f"{where}.eps: must be > 0")
        if self.optimizer != "sgd" and self.nesterov:
            raise ParamsError(f"{where}.nesterov: only with optimizer sgd")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ParamsError(f"{where}.milestones: fractions of training, each in (0, 1)")


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher pretrained by the pretrain stage on each seed's split of the dataset and noise
    setting of the run that needs it (a method whose settings name it in `teacher`)."""

    model: str
    schedule: str
    method: str


@dataclass(frozen=True)
class ExperimentSpec:
    dataset: str
    model: str
    schedule: str
    noise: tuple[str, ...]
    methods: tuple[str, ...]
    title: str = ""
    figure: str | None = None  # noise field on the x axis of the experiment's figure
    early_stopping: bool = False  # also report each method's best-on-validation epoch (+ES)
    weights_figure: bool = False  # a figure of the weights a reweighting method gave
    regions_figure: bool = False  # two-dimensional data: decision regions, gradient cosine
    # the experiment's figure shows validation curves of student and teacher over epochs
    # (LGTM Figure 2) instead of test accuracy per noise setting
    curves_figure: bool = False
    # variants of one method (e.g. focal_g05, focal_g1, focal_g2): an extra row
    # "<the variants' common name> (val-chosen)" takes, per seed, the best on validation
    choose_on_validation: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()  # entries of pipeline/reported.yaml to show beside ours
    # the papers' headline claims this experiment tests, "method > baseline" (the paper's
    # direction), optionally "@ noise" (default: the first noise setting) and "from <entry>"
    # (the `reported` entry with the paper's numbers; default: the first that has both
    # rows); each is a row of results/tables/fidelity.md, its verdict from the rows' CIs
    claims: tuple[str, ...] = ()
    fidelity_note: str = ""  # the measured reason behind this experiment's verdicts

    @property
    def chosen_row(self) -> str | None:
        """The row choose_on_validation adds: the variants' common name (whole "_" parts;
        focal_g05, focal_g1 -> focal) and " (val-chosen)"."""
        if not self.choose_on_validation:
            return None
        common = []
        names = (name.split("_") for name in self.choose_on_validation)
        for parts in zip(*names, strict=False):  # up to the shortest name
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        return f"{'_'.join(common) or self.choose_on_validation[0]} (val-chosen)"

    def check(self, where: str) -> None:
        if where == "experiments.fidelity":
            raise ParamsError(f"{where}: the name is taken by results/tables/fidelity.md")
        for key in ("noise", "methods"):
            _distinct(where, key, getattr(self, key))
        for i, text in enumerate(self.claims):
            claim = parse_claim(text, self.noise[0])
            if claim is None:
                raise ParamsError(f'{where}.claims[{i}]: {text!r} is not "method > baseline"')
            for name in (claim.method, claim.baseline):
                if name.endswith(" (val-chosen)"):
                    if name != self.chosen_row:
                        raise ParamsError(
                            f"{where}.claims[{i}]: {name!r} is not this experiment's "
                            f"choose_on_validation row ({self.chosen_row})"
                        )
                elif name.removesuffix(" +ES") not in self.methods:
                    raise ParamsError(f"{where}.claims[{i}]: {name!r} is not in methods")
            if claim.noise not in self.noise:
                raise ParamsError(f"{where}.claims[{i}]: {claim.noise!r} is not in noise")
            if claim.paper is not None and claim.paper not in self.reported:
                raise ParamsError(f"{where}.claims[{i}]: {claim.paper!r} is not in reported")
        for i, name in enumerate(self.choose_on_validation):
            if name not in self.methods:
                raise ParamsError(f"{where}.choose_on_validation[{i}]: {name!r} is not in methods")
        if self.figure is not None and self.figure not in NoiseSpec.__dataclass_fields__:
            raise ParamsError(f"{where}.figure: {self.figure!r} is not a noise setting field")
        known = reported_numbers()
        for i, name in enumerate(self.reported):
            if name not in known:
                raise ParamsError(
                    f"{where}.reported[{i}]: {name!r} is not in "
                    f"pipeline/reported.yaml (known: {', '.join(known)})"
                )


ROW = r"(\S+(?: \+ES| \(val-chosen\))?)"  # a table row: a method, its +ES or val-chosen row
CLAIM = re.compile(rf"^\s*{ROW}\s+>\s+{ROW}(?:\s+@\s*(\S+))?(?:\s+from\s+(\S+))?\s*$")


class Claim(typing.NamedTuple):
    method: str
    baseline: str
    noise: str
    paper: str | None  # the reported.yaml entry named with "from", if any


def parse_claim(text: str, default_noise: str) -> Claim | None:
    """ "method > baseline [@ noise] [from entry]"; None if malformed."""
    match = CLAIM.match(text)
    if match is None:
        return None
    method, baseline, noise, paper = match.groups()
    return Claim(method, baseline, noise or default_noise, paper)


def _distinct(where: str, key: str, values: tuple) -> None:
    if not values:
        raise ParamsError(f"{where}.{key}: must not be empty")
    if len(set(values)) != len(values):
        raise ParamsError(f"{where}.{key}: has duplicates")


@dataclass(frozen=True)
class ProfileSpec:
    """An experiment suite. Every experiment of a profile runs the same seeds, so one train
    job can train all seeds of a setting in one process (one torch start-up, not three)."""

    seeds: tuple[int, ...]
    experiments: tuple[str, ...]

    def check(self, where: str) -> None:
        _distinct(where, "seeds", self.seeds)
        _distinct(where, "experiments", self.experiments)
        if any(s < 0 for s in self.seeds):
            raise ParamsError(f"{where}.seeds: seeds are integers >= 0")


def read_yaml(path: str | Path):
    """A YAML file, parsed by libyaml's C loader where PyYAML has it (ten times faster)."""
    import yaml

    with open(path) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def reported_numbers() -> dict:
    """pipeline/reported.yaml: the numbers the papers report (read once per process: every
    experiment's check consults it)."""
    return read_yaml(Path(__file__).with_name("reported.yaml"))


@dataclass(frozen=True)
class Params:
    profile: str
    profiles: dict[str, ProfileSpec]
    run: RunSpec
    datasets: dict[str, DatasetSpec]
    noise: dict[str, NoiseSpec]
    models: dict[str, ModelSpec]
    schedules: dict[str, ScheduleSpec]
    methods: dict[str, Any]  # name -> the method's own frozen settings dataclass
    teachers: dict[str, TeacherSpec]
    experiments: dict[str, ExperimentSpec]
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def active_experiments(self) -> dict[str, ExperimentSpec]:
        return {name: self.experiments[name] for name in self.profiles[self.profile].experiments}

    @property
    def seeds(self) -> tuple[int, ...]:
        """The active profile's seeds (every experiment runs all of them)."""
        return self.profiles[self.profile].seeds

    def method_kind(self, name: str) -> str:
        return (self.raw["methods"][name] or {}).get("method", name) if self.raw else name

    def teacher_of(self, method: str) -> str | None:
        """The pretrained teacher a method's settings name, if any."""
        return getattr(self.methods[method], "teacher", None) or None


SECTIONS = (
    "profile",
    "profiles",
    "run",
    "datasets",
    "noise",
    "models",
    "schedules",
    "methods",
    "teachers",
    "experiments",
)


def _section(raw: dict, key: str, cls: type) -> dict:
    entries = raw.get(key) or {}
    if not isinstance(entries, dict):
        raise ParamsError(f"{key}: expected a mapping of names to settings")
    out = {}
    for name, value in entries.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise ParamsError(f"{key}.{name}: names use letters, digits, '_' and '-' only")
        out[name] = cls(value, f"{key}.{name}")
    return out


def _model(value: Any, where: str) -> ModelSpec:
    if not isinstance(value, dict) or "arch" not in value:
        raise ParamsError(f"{where}.arch: required")
    options = {k: v for k, v in value.items() if k != "arch"}
    return build(ModelSpec, {"arch": value["arch"]}, where, options=options)


def _method(value: Any, where: str) -> Any:
    from pipeline.methods import METHODS  # the methods own their settings

    value = dict(value or {})
    kind = value.pop("method", where.split(".")[-1])
    if kind not in METHODS:
        raise ParamsError(f"{where}.method: unknown method {kind!r} (known: {', '.join(METHODS)})")
    return build(METHODS[kind].Settings, value, where)


def parse(raw: dict) -> Params:
    """Check a params mapping completely and return the typed settings."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown top-level key (known: {', '.join(SECTIONS)})")
    params = Params(
        profile=raw.get("profile", "default"),
        profiles=_section(raw, "profiles", lambda v, w: build(ProfileSpec, v, w)),
        run=build(RunSpec, raw.get("run"), "run"),
        datasets=_section(raw, "datasets", lambda v, w: build(DatasetSpec, v, w)),
        noise=_section(raw, "noise", lambda v, w: build(NoiseSpec, v, w)),
        models=_section(raw, "models", _model),
        schedules=_section(raw, "schedules", lambda v, w: build(ScheduleSpec, v, w)),
        methods=_section(raw, "methods", _method),
        teachers=_section(raw, "teachers", lambda v, w: build(TeacherSpec, v, w)),
        experiments=_section(raw, "experiments", lambda v, w: build(ExperimentSpec, v, w)),
        raw=raw,
    )
    _check_references(params)
    return params


def _check_references(p: Params) -> None:
    for name in p.methods:
        teacher = p.teacher_of(name)
        if teacher is not None and teacher not in p.teachers:
            raise ParamsError(
                f"methods.{name}.teacher: unknown teacher {teacher!r} "
                f"(known: {', '.join(p.teachers) or 'none; add a `teachers` section'})"
            )
    for name, t in p.teachers.items():
        for key, section in (("model", p.models), ("schedule", p.schedules), ("method", p.methods)):
            if getattr(t, key) not in section:
                raise ParamsError(f"teachers.{name}.{key}: unknown {key} {getattr(t, key)!r}")
        if p.teacher_of(t.method):
            raise ParamsError(f"teachers.{name}.method: a teacher's method needs no teacher")
    if p.profile not in p.profiles:
        raise ParamsError(
            f"profile: unknown profile {p.profile!r} (known: {', '.join(p.profiles)})"
        )
    for name, profile in p.profiles.items():
        for i, exp in enumerate(profile.experiments):
            if exp not in p.experiments:
                raise ParamsError(f"profiles.{name}.experiments[{i}]: unknown experiment {exp!r}")
    for name, exp in p.experiments.items():
        where = f"experiments.{name}"
        for key, section in (
            ("dataset", p.datasets),
            ("model", p.models),
            ("schedule", p.schedules),
        ):
            if getattr(exp, key) not in section:
                raise ParamsError(
                    f"{where}.{key}: unknown {key} {getattr(exp, key)!r} "
                    f"(known: {', '.join(section)})"
                )
        for key, section in (("noise", p.noise), ("methods", p.methods)):
            for i, item in enumerate(getattr(exp, key)):
                if item not in section:
                    raise ParamsError(
                        f"{where}.{key}[{i}]: unknown {key} setting {item!r} "
                        f"(known: {', '.join(section)})"
                    )


def _read(path: str | Path) -> dict:
    import yaml  # imported here: `bench` runs on machines with torch alone

    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    try:
        return read_yaml(path)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e


def load(path: str | Path = PARAMS_FILE) -> Params:
    return parse(_read(path))


def load_run(path: str | Path = PARAMS_FILE) -> RunSpec:
    """The `run` section alone, checked: what a stage needs before torch loads (checking
    the dataset sources imports the loaders, and with them torch)."""
    raw = _read(path)
    return build(RunSpec, raw.get("run") if isinstance(raw, dict) else None, "run")
