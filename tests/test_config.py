"""params.yaml checking: every mistake is reported with the dotted key at fault."""

from __future__ import annotations

import copy

import pytest
from conftest import REPO

from pipeline.config import (
    SCHEMA_FILE,
    ParamsError,
    json_schema,
    load,
    parse,
    read_yaml,
    schema_yaml,
)


def test_repository_params_are_valid():
    p = load(REPO / "params.yaml")
    assert p.profile in p.profiles
    assert p.active_experiments


def error_of(raw) -> str:
    with pytest.raises(ParamsError) as e:
        parse(raw)
    return str(e.value)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r.update(extra=1), "extra"),
        (lambda r: r["noise"]["uniform40"].update(ratee=0.4), "noise.uniform40.ratee"),
        (lambda r: r["noise"]["uniform40"].pop("rate"), "noise.uniform40.rate"),
        (lambda r: r["noise"]["uniform40"].update(rate=1.5), "noise.uniform40.rate"),
        (lambda r: r["noise"]["uniform40"].update(kind="gaussian"), "noise.uniform40.kind"),
        (lambda r: r["schedules"]["short"].update(epochs="two"), "schedules.short.epochs"),
        (lambda r: r["schedules"]["short"].update(lr=True), "schedules.short.lr"),
        (
            lambda r: r["schedules"]["short"].update(milestones=[1.5]),
            "schedules.short.milestones[0]",
        ),
        (lambda r: r["datasets"]["digits"].update(source="imagenet"), "datasets.digits.source"),
        (lambda r: r["experiments"]["tiny"].update(dataset="cifar"), "experiments.tiny.dataset"),
        (
            lambda r: r["experiments"]["tiny"].update(noise=["clean", "uniform45"]),
            "experiments.tiny.noise[1]",
        ),
        (
            lambda r: r["experiments"]["tiny"].update(methods=["l2rw_typo"]),
            "experiments.tiny.methods[0]",
        ),
        (lambda r: r["profiles"]["default"].update(seeds=[0, 0]), "profiles.default.seeds"),
        (lambda r: r["profiles"]["default"].update(seeds=[-1]), "profiles.default.seeds[0]"),
        (lambda r: r["experiments"]["tiny"].update(seeds=[0]), "experiments.tiny.seeds"),
        (
            lambda r: r["experiments"]["tiny"].update(choose_on_validation=["l2rw"]),
            "experiments.tiny.choose_on_validation[0]",
        ),
        (lambda r: r["methods"].update(bogus={"method": "no_such"}), "methods.bogus.method"),
        (lambda r: r["methods"].update(erm={"lr": 1}), "methods.erm.lr"),
        (lambda r: r.update(profile="papr"), "profile"),
        (
            lambda r: r["profiles"]["default"].update(experiments=["nope"]),
            "profiles.default.experiments[0]",
        ),
        (lambda r: r["profiles"].update(default=["tiny"]), "profiles.default"),
        (lambda r: r["noise"].update({"rate.5": {"kind": "none"}}), "noise.rate.5"),
        (lambda r: r["run"].update(device="tpu"), "run.device"),
        (lambda r: r["models"]["mlp"].update(arch="mpl"), "models.mlp.arch"),
        (lambda r: r["models"]["mlp"].update(hiden=[8]), "models.mlp.hiden"),
        (lambda r: r["models"]["mlp"].update(num_classes=3), "models.mlp.num_classes"),
    ],
)
def test_mistakes_name_the_key(tiny_raw, edit, key):
    edit(tiny_raw)
    message = error_of(tiny_raw)
    assert message.startswith(key + ":"), message


def test_parse_gives_typed_settings(tiny_raw):
    p = parse(tiny_raw)
    assert p.noise["uniform40"].rate == 0.4
    assert p.schedules["short"].milestones == (0.5,)
    assert p.seeds == (0, 1) and p.profiles["other"].seeds == (0,)
    assert p.method_kind("erm") == "erm"


def test_committed_schema_is_generated_from_the_dataclasses():
    assert (REPO / SCHEMA_FILE).read_text() == schema_yaml(), "run python -m pipeline schema"


def test_schema_accepts_the_params_and_refuses_what_parse_refuses(tiny_raw):
    """The generated schema (for editors) holds the same types and ranges as `parse`."""
    import jsonschema

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(read_yaml(REPO / "params.yaml"), schema)
    edits = [
        ("noise", "uniform40", "ratee", 0.4),
        ("noise", "uniform40", "rate", 1.5),
        ("schedules", "short", "momentum", 1.0),
        ("models", "mlp", "dropout", 1.5),
        ("models", "mlp", "hiden", [8]),
    ]
    for section, name, key, value in edits:
        raw = copy.deepcopy(tiny_raw)
        raw[section][name][key] = value
        with pytest.raises(ParamsError):
            parse(raw)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(raw, schema)
    tiny_raw["methods"]["reed"] = {"method": "bootstrap", "beta": 1.5}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tiny_raw, schema)


def test_every_source_has_its_facts():
    from pipeline.catalog import CATALOG
    from pipeline.data.sources import SOURCES

    assert list(SOURCES) == list(CATALOG)


def own_table(raw, **dataset) -> dict:
    """A user's table under experiment `tiny`, on noise setting `mine_noise`."""
    raw["datasets"]["mine"] = {"source": "table", "path": "mine.csv", "test_size": 10, **dataset}
    raw["noise"]["mine_noise"] = {"kind": "uniform", "rate": 0.2, "val_trusted": True}
    raw["experiments"]["tiny"].update(dataset="mine", noise=["mine_noise"])
    return raw


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (lambda r: own_table(r), "noise.mine_noise.val_trusted", "marks no trusted rows"),
        (
            lambda r: own_table(r, val_path="checked.csv")["noise"]["mine_noise"].update(
                val_trusted=False, val_size=5
            ),
            "noise.mine_noise.val_trusted",
            "drawn into training",
        ),
        (
            lambda r: own_table(r, val_path="checked.csv")["noise"]["mine_noise"].update(
                val_size=5
            ),
            "noise.mine_noise",
            "val_size or val_trusted",
        ),
        (
            lambda r: r["datasets"]["digits"].update(val_path="checked.csv"),
            "datasets.digits.val_path",
            "only for source table or image_folder",
        ),
        (
            lambda r: own_table(r, source="arrays", trusted_column="ok"),
            "datasets.mine.trusted_column",
            "only for source table",
        ),
        (
            lambda r: own_table(r, val_path="a.csv", trusted_column="ok"),
            "datasets.mine",
            "not both",
        ),
    ],
)
def test_trusted_rows_are_checked_before_any_job(tiny_raw, edit, key, words):
    edit(tiny_raw)
    message = error_of(tiny_raw)
    assert message.startswith(key + ":") and words in message, message


def test_a_table_with_a_trusted_file_and_val_trusted_is_accepted(tiny_raw):
    p = parse(own_table(tiny_raw, val_path="checked.csv", id_column="id"))
    assert p.noise["mine_noise"].val_trusted and p.datasets["mine"].has_trusted_rows
