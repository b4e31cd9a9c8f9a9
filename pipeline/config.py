"""params.yaml: read strictly, check whole and turn into frozen dataclasses.

Every section entry becomes a frozen dataclass built by `build` (pipeline/typed.py), which
rejects unknown keys, wrong types and values outside their declared ranges with the dotted key
in the message. Cross-references (an experiment naming a noise setting that does not exist,
say) and splits against what the dataset holds (pipeline/catalog.py) are checked in
`_check_references`. Nothing here imports torch, so the Snakefile, the DVC check stage and the
report jobs read params.yaml without paying for it.
"""

from __future__ import annotations

import functools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pipeline.typed import (
    INCREASING,
    Fraction,
    FractionBelow1,
    NonNegative,
    NonNegativeInt,
    ParamsError,
    Positive,
    PositiveInt,
    Within,
    build,
    dataclass_schema,
)

PARAMS_FILE = "params.yaml"
MAX_EPOCHS = 100_000  # see ScheduleSpec.epochs
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")  # no dots: DVC reads dotted keys as nesting


@dataclass(frozen=True)
class RunSpec:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: PositiveInt = 1
    cpu_numerics: Literal["portable", "fast"] = "portable"  # see pipeline/numerics.py


@dataclass(frozen=True)
class ClusterSpec:
    """What a cluster executor's jobs ask for (workflow/profiles/slurm). Only the Snakefile
    reads it, so no result depends on it. None: the cluster's default (no account given)."""

    partition: str | None = None
    gpu_partition: str | None = None  # for the jobs that use a GPU; None: `partition`
    account: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from. test_size: carve a test split (sources without one)."""

    source: str  # a loader of pipeline/data/sources.py SOURCES
    test_size: PositiveInt | None = None
    size: PositiveInt = 2000  # two moons: number of points
    noise: NonNegative = 0.1  # two moons: Gaussian noise of the points
    download: bool = False  # opt-in download (torchvision sets, GLUE)
    max_length: PositiveInt = 64  # text: tokens per example (truncated, padded); translation:
    # the longest side kept, in BPE tokens with </s>
    vocab_size: PositiveInt = 4000  # translation: the joint BPE's pieces (learnt on non-test)
    root: str | None = None  # where the source's files are; None: the source's default
    # the user's own data (sources table, arrays, image_folder; see pipeline/data/user_sources.py)
    path: str | None = None  # the file or folder
    label: str = "label"  # table: the column of integer class labels
    id_column: str | None = None  # table: a column of example ids (not a feature)
    image_size: PositiveInt = 32  # image_folder: images are resized to this square
    # the rows checked by hand (a noise setting's `val_trusted` makes them the validation
    # split): table: a file of the same columns; image_folder: a folder of class folders
    val_path: str | None = None
    trusted_column: str | None = None  # table: a column of 0/1 marking the trusted rows

    def check(self, where: str) -> None:
        from pipeline.catalog import CATALOG

        if self.source not in CATALOG:
            raise ParamsError(
                f"{where}.source: unknown source {self.source!r} (known: {', '.join(CATALOG)})"
            )
        self._check_trusted(where)
        facts = self.facts
        if facts.user:  # nothing is known of the user's files before the prepare stage
            return
        if facts.test != 0 and self.test_size is not None:
            raise ParamsError(f"{where}.test_size: {self.source} has a test split of its own")
        if facts.test == 0 and self.test_size is None:
            raise ParamsError(f"{where}.test_size: required ({self.source} has no test split)")
        examples = self.examples
        if examples is not None and self.test_size is not None and self.test_size >= examples:
            raise ParamsError(
                f"{where}.test_size: a test split of {self.test_size} leaves none of the "
                f"{examples} examples to train on"
            )

    def _check_trusted(self, where: str) -> None:
        takes = {"table": ("val_path", "trusted_column"), "image_folder": ("val_path",)}
        for key in ("val_path", "trusted_column"):
            if getattr(self, key) is not None and key not in takes.get(self.source, ()):
                sources = [s for s, keys in takes.items() if key in keys]
                raise ParamsError(f"{where}.{key}: only for source {' or '.join(sources)}")
        if self.val_path is not None and self.trusted_column is not None:
            raise ParamsError(f"{where}: give val_path or trusted_column, not both")

    @property
    def has_trusted_rows(self) -> bool:
        return self.val_path is not None or self.trusted_column is not None

    @property
    def facts(self):
        """What pipeline/catalog.py knows of the source before loading it."""
        from pipeline.catalog import CATALOG

        return CATALOG[self.source]

    @property
    def examples(self) -> int | None:
        """How many examples the source gives, test split included (None: known on loading)."""
        sized_by = self.facts.sized_by
        return getattr(self, sized_by) if sized_by else self.facts.examples

    @property
    def pool(self) -> int | None:
        """Examples outside the test split, which the noise settings split into validation and
        training (None: known on loading)."""
        if self.examples is None or self.facts.test is None:
            return None
        return self.examples - (self.facts.test or self.test_size or 0)


NOISE_FIELDS = {  # kind -> fields it requires beyond the split
    "none": (),
    "uniform": ("rate",),
    "flip_similar": ("rate",),
    "background": ("rate",),
    "imbalance": ("classes", "majority_fraction", "train_size"),
    "few_labels": ("labels",),
    "mask": ("rate", "token_rate"),
}
TRANSLATION_NOISE = ("none", "mask")  # the kinds a translation dataset takes


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
    mask (translation): a training pair is picked with prob. `rate`, and in a picked pair each
        source and target token becomes <mask> with prob. `token_rate` (deep-interactions
        paper, section 4.5).
    train_size (other kinds): keep a random subset of that many training examples.
    val_trusted: the dataset's trusted rows (its `val_path` or `trusted_column`) are the clean
        validation split, instead of val_size or val_per_class rows drawn at random.
    """

    kind: Literal[tuple(NOISE_FIELDS)]  # type: ignore[valid-type]
    rate: Fraction | None = None
    val_size: PositiveInt | None = None
    val_per_class: PositiveInt | None = None
    background: NonNegativeInt | None = None
    classes: tuple[NonNegativeInt, NonNegativeInt] | None = None
    majority_fraction: Annotated[float, Within("[0.5, 1)")] | None = None
    train_size: PositiveInt | None = None
    labels: PositiveInt | None = None
    token_rate: Fraction | None = None
    val_trusted: bool = False

    def check(self, where: str) -> None:
        for key in NOISE_FIELDS[self.kind]:
            if getattr(self, key) is None:
                raise ParamsError(f"{where}.{key}: required for kind {self.kind}")
        if self.classes is not None and self.classes[0] == self.classes[1]:
            raise ParamsError(f"{where}.classes: two different classes")
        given = [k for k in ("val_size", "val_per_class") if getattr(self, k) is not None]
        if self.val_trusted:
            given.append("val_trusted")
        if len(given) > 1:
            raise ParamsError(f"{where}: give one of {' or '.join(given)}, not both")
        if self.kind in ("few_labels", "imbalance") and self.val_trusted:
            raise ParamsError(f"{where}.val_trusted: not for kind {self.kind}")
        if self.kind != "few_labels" and not given:
            raise ParamsError(f"{where}.val_size: required (or val_per_class, or val_trusted)")

    def check_fits(self, where: str, data: DatasetSpec, used_by: str) -> None:
        """The split and classes fit `data` (the dataset of experiment `used_by`)."""
        if self.val_trusted and not data.has_trusted_rows:
            raise ParamsError(
                f"{where}.val_trusted: dataset {data.source} (used by {used_by}) marks no "
                "trusted rows: give it val_path or trusted_column"
            )
        if data.has_trusted_rows and not self.val_trusted:
            raise ParamsError(
                f"{where}.val_trusted: dataset {data.source} (used by {used_by}) marks trusted "
                "rows; set val_trusted: true so they are the validation split (otherwise they "
                "would be drawn into training at random)"
            )
        if data.facts.user:  # checked when the noise stage reads the prepared data
            return
        self.check_counts(
            where, data.facts.task, data.facts.classes, data.pool, data.source, used_by
        )

    def check_counts(
        self, where: str, task: str, k: int, pool: int | None, source: str, used_by: str
    ) -> None:
        """The split and classes fit a dataset `source` of kind `task` with `k` classes and
        `pool` examples outside its test split (None: known on loading). The noise stage calls
        it again with the prepared data's own counts."""
        translation = task == "translation"
        if translation != (self.kind in TRANSLATION_NOISE[1:]) and self.kind != "none":
            kinds = "none or mask" if translation else "any kind but mask"
            raise ParamsError(
                f"{where}.kind: {self.kind} does not apply to {source} (used by "
                f"{used_by}), a {task} dataset: {kinds}"
            )
        about = f"{source} has {k} classes (used by {used_by})"
        if self.background is not None and self.background >= k:
            raise ParamsError(
                f"{where}.background: class {self.background} does not exist; {about}"
            )
        for i, c in enumerate(self.classes or ()):
            if c >= k:
                raise ParamsError(f"{where}.classes[{i}]: class {c} does not exist; {about}")
        if self.labels is not None and self.labels % k:
            raise ParamsError(
                f"{where}.labels: {self.labels} labelled examples are not the same number per "
                f"class; {about}"
            )
        if pool is None or self.kind == "imbalance":  # imbalance: checked on the two classes
            return
        key, val = self.validation_size(k)
        fits = f"the {pool} examples outside the test split of {source} (used by {used_by})"
        if val >= pool:
            raise ParamsError(
                f"{where}.{key}: {val} validation examples leave none to train on in {fits}"
            )
        if self.train_size and val + self.train_size > pool:
            raise ParamsError(
                f"{where}.train_size: {val} validation and {self.train_size} training "
                f"examples do not fit {fits}"
            )

    def validation_size(self, k: int) -> tuple[str, int]:
        """How many examples the validation split takes from a dataset of `k` classes, and the
        key that sets it (few_labels: the labelled examples are the validation split)."""
        if self.val_per_class is not None:
            return "val_per_class", self.val_per_class * k
        if self.kind == "few_labels":
            return "labels", self.labels or 0
        return "val_size", self.val_size or 0


@dataclass(frozen=True)
class ModelSpec:
    """An architecture of pipeline/models.py and its options (keyword arguments of its class,
    checked against the types and rules the class declares)."""

    arch: str  # pipeline/arch_options.py ARCH_NAMES
    options: dict = field(default_factory=dict)

    def check(self, where: str) -> None:
        from pipeline.arch_options import ARCH_NAMES, check_options

        if self.arch not in ARCH_NAMES:
            raise ParamsError(f"{where}.arch: {self.arch!r} is not one of {', '.join(ARCH_NAMES)}")
        check_options(self.arch, self.options, where)


@dataclass(frozen=True)
class ScheduleSpec:
    """The student's optimiser and its rate (pipeline/core/student.py scheduled_lr): step
    decay (lr *= gamma at each fraction of training in milestones), fairseq's inverse_sqrt or
    a cosine to 0, after a linear warm-up over warmup_steps. optimizer: sgd (momentum,
    nesterov), adam (weight_decay as L2 in the gradient, as torch.optim.Adam) or adamw
    (decoupled weight decay); betas and eps: Adam's."""

    # at most 100,000: 36x the longest schedule of the papers (MPL's 1M steps, 2,783 epochs);
    # a larger count is a typo that would keep a job running for ever, not a schedule
    epochs: Annotated[int, Within(f"[1, {MAX_EPOCHS}]")]
    batch_size: PositiveInt
    lr: Positive
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: FractionBelow1 = 0.9
    nesterov: bool = False
    weight_decay: NonNegative = 0.0
    betas: tuple[FractionBelow1, FractionBelow1] = (0.9, 0.999)
    eps: Positive = 1e-8
    milestones: Annotated[tuple[Annotated[float, Within("(0, 1)")], ...], INCREASING] = ()
    gamma: Positive = 0.1
    augment: Literal["none", "crop_flip", "randaugment"] = "none"  # pipeline/augment.py
    val_batch_size: PositiveInt | None = None  # methods' validation batch; None: batch_size
    eval_every: NonNegativeInt = 0  # validation figures every this many steps too (0: none)
    # validation figures at the end of every this many epochs (and always after the last);
    # the best-on-validation model is picked among these
    val_every_epochs: PositiveInt = 1
    # the history's validation figures on this many validation examples (0: all), drawn once
    # per seed: the same examples at every evaluation and for every method; the methods'
    # teachers still read the whole split, and the test split is always scored in full
    val_subset: NonNegativeInt = 0
    # record at each epoch end how well the student fits the training labels it is given
    # (train_acc) and, among the corrupted ones, the fraction it predicts as given (noisy_fit):
    # the check that a baseline memorises the noise (one eval pass over the training split)
    fit_curve: bool = False
    # translation: fairseq's label-smoothed cross entropy (its eps)
    label_smoothing: FractionBelow1 = 0.0
    # linear warm-up of the lr over the first warmup_steps, then decay by milestones (step),
    # as fairseq's inverse_sqrt, or on half a cosine to 0 at the last step (cosine: the
    # schedule of MPL's Appendix B and of its authors' code)
    warmup_steps: NonNegativeInt = 0
    lr_decay: Literal["step", "inverse_sqrt", "cosine"] = "step"

    def check(self, where: str) -> None:
        if self.lr_decay == "inverse_sqrt" and not self.warmup_steps:
            raise ParamsError(f"{where}.warmup_steps: required by lr_decay inverse_sqrt")
        if self.lr_decay != "step" and self.milestones:
            raise ParamsError(f"{where}.milestones: step decay, not with lr_decay {self.lr_decay}")
        if self.optimizer != "sgd" and self.nesterov:
            raise ParamsError(f"{where}.nesterov: only with optimizer sgd")


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
    # the suspects stage: each method's top this-many suspect labels per class, and how well
    # its ranking finds the corrupted labels (pipeline/suspects.py); 0: no such stage
    suspects: NonNegativeInt = 0
    contact_sheet: bool = False  # image data: the suspects figure shows the top suspects
    suspects_note: str = ""  # what was measured behind the detection figures
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
        if self.contact_sheet and not self.suspects:
            raise ParamsError(f"{where}.contact_sheet: only with suspects (a count per class)")
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

    seeds: tuple[NonNegativeInt, ...]
    experiments: tuple[str, ...]

    def check(self, where: str) -> None:
        _distinct(where, "seeds", self.seeds)
        _distinct(where, "experiments", self.experiments)


def read_yaml(path: str | Path):
    """A YAML file, parsed by libyaml's C loader where PyYAML has it (ten times faster).
    Strict where PyYAML is lenient: a byte that is not UTF-8 and a key given twice in one
    mapping (PyYAML keeps the last silently) are errors naming the line."""
    import yaml

    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ParamsError(f"{path}, line {line}: byte {raw[e.start]:#04x} is not UTF-8") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, "", path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(
    node: Any,
    where: str,
    path: str | Path,
    inside: frozenset = frozenset(),
    done: set | None = None,
) -> None:
    """A key given twice in one mapping, or an alias inside the node it names (a YAML
    structure that contains itself, which no setting can be), is an error naming the key.
    `inside`: the nodes this one is part of; `done`: the nodes checked already (an alias
    repeats a node, which need not be walked twice)."""
    import yaml

    done = set() if done is None else done
    if id(node) in inside:
        line = node.start_mark.line + 1
        raise ParamsError(
            f"{where or 'params.yaml'}: an alias inside the node it names, which would contain "
            f"itself ({path}, line {line})"
        )
    if id(node) in done:
        return
    inside = inside | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{where}[{i}]", path, inside, done)
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: an explicit key may override
                _refuse_duplicate_keys(value_node, where, path, inside, done)
                continue
            key = f"{where}.{key_node.value}" if where else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                raise ParamsError(f"{key}: given twice ({path}, lines {first[key]} and {line})")
            first[key] = line
            _refuse_duplicate_keys(value_node, key, path, inside, done)
    done.add(id(node))


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
    cluster: ClusterSpec
    datasets: dict[str, DatasetSpec]
    noise: dict[str, NoiseSpec]
    models: dict[str, ModelSpec]
    schedules: dict[str, ScheduleSpec]
    methods: dict[str, Any]  # name -> the method's own frozen settings dataclass
    teachers: dict[str, TeacherSpec]
    experiments: dict[str, ExperimentSpec]
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    # the entries an `include`d file gave ("datasets.mine" -> its path), for DVC's params
    included: dict[str, str] = field(repr=False, compare=False, default_factory=dict)

    @property
    def settings_files(self) -> list[str]:
        """params.yaml and the files it includes: what a change of settings is read from."""
        return [PARAMS_FILE, *(self.raw.get("include") or [])]

    def file_of(self, key: str) -> str:
        """The settings file that defines a dotted key ("datasets.mine.path")."""
        return self.included.get(".".join(key.split(".")[:2]), PARAMS_FILE)

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
        """The model the pretrain stage trains for a method, if any: its teacher (unless the
        method starts the teacher untrained: `one_stage`), or the model its student starts
        from."""
        settings = self.methods[method]
        if self.untuned_teacher_of(method):
            return settings.start_from or None
        return getattr(settings, "teacher", None) or settings.start_from or None

    def untuned_teacher_of(self, method: str) -> str | None:
        """The `teachers` entry a one-stage method starts from its model's pretrained
        checkpoint, without the pretrain stage's fine-tuning; None for every other method."""
        settings = self.methods[method]
        return settings.teacher if getattr(settings, "one_stage", False) else None


SECTIONS = (
    "include",
    "profile",
    "profiles",
    "run",
    "cluster",
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
    if not isinstance(value, dict):
        raise ParamsError(f"{where}: expected a mapping with an arch, got {value!r}")
    if "arch" not in value:
        raise ParamsError(f"{where}.arch: required")
    options = {k: v for k, v in value.items() if k != "arch"}
    return build(ModelSpec, {"arch": value["arch"]}, where, options=options)


def _method(value: Any, where: str) -> Any:
    from pipeline.methods.settings import SETTINGS

    if value is not None and not isinstance(value, dict):
        raise ParamsError(
            f"{where}: expected a mapping of the method's settings (or nothing), got {value!r}"
        )
    value = dict(value or {})
    kind = value.pop("method", where.split(".")[-1])
    if kind not in SETTINGS:
        raise ParamsError(f"{where}.method: unknown method {kind!r} (known: {', '.join(SETTINGS)})")
    return build(SETTINGS[kind], value, where)


# what an included file may give: named entries, joined to params.yaml's (the run-wide
# settings stay in params.yaml)
ENTRY_SECTIONS = tuple(s for s in SECTIONS if s not in ("include", "profile", "run", "cluster"))


def _check_top_level(raw: Any, path: str | Path) -> None:
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(SECTIONS), key=str)
    if unknown:
        where = "" if str(path) == PARAMS_FILE else f"{path}: "
        raise ParamsError(
            f"{where}{unknown[0]}: unknown top-level key (known: {', '.join(SECTIONS)})"
        )


def _include(raw: dict, root: Path) -> tuple[dict, dict[str, str]]:
    """params.yaml with the entries of the files its `include` lists joined to its own
    sections (a user's datasets and experiments, kept apart from the project's), and where
    each joined entry came from. A name defined twice is an error naming both files."""
    paths = raw.get("include") or []
    if not isinstance(paths, list) or not all(isinstance(f, str) and f for f in paths):
        raise ParamsError("include: expected a list of settings files (paths from the repository)")
    if len(set(paths)) != len(paths):
        raise ParamsError("include: has duplicates")
    merged = dict(raw)
    origin: dict[str, str] = {}
    for path in paths:
        extra = _read(root / path, shown=path)
        extra = {} if extra is None else extra  # an empty file gives nothing
        _check_top_level(extra, path)
        for key, entries in extra.items():
            if key not in ENTRY_SECTIONS:
                raise ParamsError(
                    f"{path}: {key}: an included file gives entries of "
                    f"{', '.join(ENTRY_SECTIONS)}; `{key}` is set in params.yaml"
                )
            merged[key] = _joined(merged.get(key), entries, key, path, origin)
    return merged, origin


def _joined(section: Any, entries: Any, key: str, path: str, origin: dict[str, str]) -> dict:
    """A section of params.yaml (or of the files included before) with an included file's
    entries added; `origin` records where each came from."""
    for where, value in ((PARAMS_FILE, section), (path, entries)):
        if value is not None and not isinstance(value, dict):
            raise ParamsError(f"{where}: {key}: expected a mapping of names to settings")
    joined = dict(section or {})
    for name, value in (entries or {}).items():
        if name in joined:
            first = origin.get(f"{key}.{name}", PARAMS_FILE)
            raise ParamsError(f"{key}.{name}: defined in {first} and in {path}")
        joined[name] = value
        origin[f"{key}.{name}"] = path
    return joined


def parse(raw: dict, root: str | Path = ".") -> Params:
    """Check a params mapping completely (with the files it includes, read from `root`) and
    return the typed settings."""
    _check_top_level(raw, PARAMS_FILE)
    raw, included = _include(raw, Path(root))
    params = Params(
        profile=raw.get("profile", "default"),
        profiles=_section(raw, "profiles", lambda v, w: build(ProfileSpec, v, w)),
        run=build(RunSpec, raw.get("run"), "run"),
        cluster=build(ClusterSpec, raw.get("cluster"), "cluster"),
        datasets=_section(raw, "datasets", lambda v, w: build(DatasetSpec, v, w)),
        noise=_section(raw, "noise", lambda v, w: build(NoiseSpec, v, w)),
        models=_section(raw, "models", _model),
        schedules=_section(raw, "schedules", lambda v, w: build(ScheduleSpec, v, w)),
        methods=_section(raw, "methods", _method),
        teachers=_section(raw, "teachers", lambda v, w: build(TeacherSpec, v, w)),
        experiments=_section(raw, "experiments", lambda v, w: build(ExperimentSpec, v, w)),
        raw=raw,
        included=included,
    )
    _check_references(params)
    return params


def _check_references(p: Params) -> None:
    for name, settings in p.methods.items():
        if getattr(settings, "teacher", None) and settings.start_from:
            raise ParamsError(
                f"methods.{name}.start_from: a method reads one pretrained model; it has a "
                "teacher already"
            )
        teacher = p.teacher_of(name) or p.untuned_teacher_of(name)
        if teacher is not None and teacher not in p.teachers:
            field = "start_from" if settings.start_from else "teacher"
            raise ParamsError(
                f"methods.{name}.{field}: unknown teacher {teacher!r} "
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
        for noise in exp.noise:
            p.noise[noise].check_fits(f"noise.{noise}", p.datasets[exp.dataset], where)
        _check_task_kind(p, name, exp)
    _check_unused_noise(p)


def _check_unused_noise(p: Params) -> None:
    """A noise setting that no experiment uses must still fit some dataset of params.yaml (its
    classes exist, its split fits), or `python -m pipeline noise` would fail on it. A user's
    own dataset may be the one it is meant for: the noise stage checks it against that."""
    used = {noise for exp in p.experiments.values() for noise in exp.noise}
    known = [data for data in p.datasets.values() if not data.facts.user]
    if not known or len(known) < len(p.datasets):
        return
    for name, spec in p.noise.items():
        if name in used:
            continue
        errors = []
        for data in known:
            used_by = "no experiment; checked against every dataset of params.yaml"
            try:
                spec.check_fits(f"noise.{name}", data, used_by)
            except ParamsError as e:
                errors.append(e)
            else:
                break
        else:
            raise errors[0]


def _check_task_kind(p: Params, name: str, exp) -> None:
    """The experiment's methods, schedule and model suit its dataset's kind of task, and a
    student that starts from a pretrained model has that model's architecture."""
    from pipeline.methods.settings import TASK_KINDS

    where = f"experiments.{name}"
    data = p.datasets[exp.dataset]
    kind = "classification" if data.facts.user else data.facts.task
    translation = kind == "translation"
    if translation != (p.models[exp.model].arch == "fairseq"):
        raise ParamsError(
            f"{where}.model: {exp.dataset} is a {kind} dataset; arch fairseq is for "
            "translation and only for it"
        )
    if p.schedules[exp.schedule].label_smoothing and not translation:
        raise ParamsError(f"schedules.{exp.schedule}.label_smoothing: translation only ({where})")
    for method in exp.methods:
        settings, method_kind = p.methods[method], p.method_kind(method)
        kinds = TASK_KINDS.get(method_kind, ("classification",))
        if kind not in kinds:
            raise ParamsError(
                f"{where}.methods: {method} ({method_kind}) is written for "
                f"{', '.join(kinds)}, not {kind} ({exp.dataset})"
            )
        if translation and method_kind == "dir" and set(settings.features) - {"I0", "I1", "L"}:
            raise ParamsError(
                f"methods.{method}.features: a translation's DIR teacher reads I0, I1 and L "
                f"(M0 and M1 are of classes; used by {where})"
            )
        check_schedule = getattr(settings, "check_schedule", None)  # a method's settings
        if check_schedule is not None:  # that depend on the batch (MPL's unlabelled_ratio)
            check_schedule(f"methods.{method}", p.schedules[exp.schedule], where)
        if not translation and getattr(settings, "hold_eos", False):
            raise ParamsError(
                f"methods.{method}.hold_eos: holds a sentence's end, translation only "
                f"(used by {where})"
            )
        start = settings.start_from
        if start and p.teachers[start].model != exp.model:
            raise ParamsError(
                f"methods.{method}.start_from: teacher {start!r} is a {p.teachers[start].model}, "
                f"the student of {where} a {exp.model}"
            )


def _read(path: str | Path, shown: str | Path | None = None) -> dict:
    """A settings file; errors name it as `shown` (an included file as params.yaml gives it)."""
    import yaml  # imported here: `bench` runs on machines with torch alone

    path = Path(path)
    shown = shown or path
    if not path.is_file():
        where = "run from the repository root" if shown == path else "include"
        raise ParamsError(f"{shown}: not found ({where})")
    try:
        return read_yaml(path)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f", line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{shown}{line}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{shown}: not valid YAML: {e}") from None


def load(path: str | Path = PARAMS_FILE) -> Params:
    return parse(_read(path), root=Path(path).parent)


def load_run(path: str | Path = PARAMS_FILE) -> RunSpec:
    """The `run` section alone, checked: what a stage needs before torch loads (checking
    the dataset sources imports the loaders, and with them torch)."""
    raw = _read(path)
    return build(RunSpec, raw.get("run") if isinstance(raw, dict) else None, "run")


SCHEMA_FILE = "workflow/schemas/params.schema.yaml"


def json_schema() -> dict:
    """params.yaml's JSON schema, generated from the dataclasses above, the methods' Settings
    and the architectures' keyword arguments: one definition of every option. The checks
    across fields and entries (references, sizes against the data) are `parse`'s alone."""
    from pipeline.arch_options import ARCH_NAMES, ARCH_OPTIONS
    from pipeline.catalog import CATALOG
    from pipeline.methods.settings import SETTINGS

    name = {"type": "string", "pattern": NAME.pattern}

    def section(entry: dict) -> dict:
        return {"type": "object", "propertyNames": name, "additionalProperties": entry}

    dataset = dataclass_schema(DatasetSpec)
    dataset["properties"]["source"] = {"enum": list(CATALOG)}
    arch_rules = []
    for arch in ARCH_NAMES:
        options = dataclass_schema(ARCH_OPTIONS[arch])
        options["properties"]["arch"] = {"const": arch}
        arch_rules.append({"if": {"properties": {"arch": {"const": arch}}}, "then": options})
    model = {
        "type": "object",
        "required": ["arch"],
        "properties": {"arch": {"enum": list(ARCH_NAMES)}},
        "allOf": arch_rules,
    }
    kinds = []
    for kind, cls in SETTINGS.items():
        settings = dataclass_schema(cls)
        settings["properties"] = {"method": {"const": kind}, **settings["properties"]}
        kinds.append(settings)
    method = {
        "description": "an entry named after a method, or naming one with `method:`",
        "anyOf": [{"type": "null"}, *kinds],
    }
    experiment = dataclass_schema(ExperimentSpec)
    for key in ("noise", "methods"):
        experiment["properties"][key] |= {"items": name, "minItems": 1, "uniqueItems": True}
    profile = dataclass_schema(ProfileSpec)
    profile["properties"]["seeds"] |= {"minItems": 1, "uniqueItems": True}
    properties = {
        "include": {
            "description": "settings files whose entries join these (paths from the repository)",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
        },
        "profile": name,
        "profiles": section(profile),
        "run": dataclass_schema(RunSpec),
        "cluster": dataclass_schema(ClusterSpec),
        "datasets": section(dataset),
        "noise": section(dataclass_schema(NoiseSpec)),
        "models": section(model),
        "schedules": section(dataclass_schema(ScheduleSpec)),
        "methods": section(method),
        "teachers": section(dataclass_schema(TeacherSpec)),
        "experiments": section(experiment),
    }
    assert list(properties) == list(SECTIONS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": (
            "params.yaml, generated by `python -m pipeline schema` from pipeline/config.py "
            "(do not edit); pipeline/config.py also checks references and sizes"
        ),
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def schema_yaml() -> str:
    import json

    import yaml

    schema = json.loads(json.dumps(json_schema()))  # no shared parts: no YAML anchors
    return yaml.safe_dump(schema, sort_keys=False, width=100)
