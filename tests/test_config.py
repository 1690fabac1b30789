"""The recipe: defaults are the paper's, typed coercion from flags and files, clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json

import pytest

from alexnet import config as cfg
from alexnet.commands.train import add_recipe_flags
from alexnet.config import TrainConfig
from alexnet.errors import UserError
from alexnet.model import AlexNet


def test_defaults_are_the_papers():
    c = TrainConfig()
    paper = dict(
        batch_size_per_device=128,  # section 5
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        dropout=0.5,  # section 4.2
        crop_size=224,  # section 4.1
        towers=2,  # section 3.2
        epochs=90,  # "roughly 90 cycles"
        pca_lighting_std=0.1,  # section 4.1
        lrn=True,
        lrn_convention="paper",
        lrn_before_relu=False,
        overlapping_pool=True,
        activation="relu",
        width=1.0,
        stem="paper",
        init="paper",
        param_groups="paper",
        schedule="plateau",
        max_lr_reductions=3,
        lr_factor=0.1,
        random_crop=True,
        flip=True,
        subtract_mean=True,
        input_scale=1.0,
    )
    assert {k: getattr(c, k) for k in paper} == paper


def test_model_fields_default_to_the_models_defaults():
    """Every recipe key that is an AlexNet argument has the same default in both places."""
    signature = inspect.signature(AlexNet).parameters
    shared = [f.name for f in dataclasses.fields(TrainConfig) if f.name in signature]
    assert set(shared) >= {"towers", "lrn", "lrn_convention", "activation", "dropout", "width", "stem"}
    for name in shared:
        assert getattr(TrainConfig(), name) == signature[name].default, name


def test_frozen():
    c = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 0.1
    assert c.replace(lr=0.1).lr == 0.1 and c.lr == 0.01


def test_unknown_keys_are_user_errors():
    with pytest.raises(UserError, match="learning_rate"):
        cfg.from_dict({"learning_rate": 0.1})
    with pytest.raises(UserError, match="bogus"):
        cfg.from_dict({"lr": 0.1, "bogus": 1})


def test_coercion_from_strings():
    c = cfg.from_dict(
        {
            "lr": "0.1",
            "weight_decay": "1e-4",
            "towers": "1",
            "epochs": "12",
            "lrn": "false",
            "flip": "no",
            "compile": "ON",
            "milestones_epochs": "10, 20 30",
            "activation": "tanh",
        }
    )
    assert (c.lr, c.weight_decay, c.towers, c.epochs) == (0.1, 1e-4, 1, 12)
    assert type(c.towers) is int and type(c.lr) is float
    assert (c.lrn, c.flip, c.compile) == (False, False, True)
    assert c.milestones_epochs == (10, 20, 30)
    assert c.activation == "tanh"


@pytest.mark.parametrize(
    "key,value",
    [
        ("epochs", "ten"),
        ("epochs", 2.5),
        ("epochs", "2.5"),
        ("epochs", True),  # JSON true is not 1
        ("lr", "fast"),
        ("lr", "nan"),
        ("lr", "inf"),
        ("lr", False),
        ("lrn", "maybe"),
        ("lrn", 2),
        ("milestones_epochs", "ten, twenty"),
        ("milestones_epochs", 30),
    ],
)
def test_bad_types_name_the_key(key, value):
    with pytest.raises(UserError, match=key):
        cfg.from_dict({key: value})


def test_integral_floats_are_accepted_for_ints():
    assert cfg.from_dict({"epochs": 12.0}).epochs == 12


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(towers=3), "towers must be one of 1, 2; got 3"),
        (dict(activation="sigmoid"), "activation must be one of relu, tanh; got 'sigmoid'"),
        (dict(lrn_convention="torch"), "lrn_convention"),
        (dict(schedule="cosine"), "schedule"),
        (dict(init="xavier"), "init"),
        (dict(precision="fp16"), "precision"),
        (dict(lr=0.0), "lr must be positive; got 0.0"),
        (dict(lr=-0.01), "lr must be positive"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\); got 1.0"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(dropout=1.0), "dropout"),
        (dict(epochs=0), "epochs must be at least 1; got 0"),
        (dict(batch_size_per_device=0), "batch_size_per_device"),
        (dict(width=0.0), "width"),
        (dict(pca_lighting_std=-0.1), "pca_lighting_std"),
        (dict(lr_factor=1.0), "lr_factor"),
        (dict(plateau_patience_epochs=0), "plateau_patience_epochs"),
        (dict(plateau_threshold=-1e-3), "plateau_threshold"),
        (dict(max_lr_reductions=-1), "max_lr_reductions"),
        (dict(milestones_epochs=(0, 30)), "milestones_epochs"),
        (dict(milestones_epochs=(30, 60, 30)), "milestones_epochs lists epoch 30 more than once"),
        (dict(loader_workers=-2), "loader_workers"),
        (dict(cpu_threads=-1), "cpu_threads"),
        (dict(input_scale=0.0), "input_scale"),
        (dict(tower_parallel=True, towers=1), "towers=2"),
        (dict(crop_size=32), "crop_size 32 is too small for stem 'paper'.*64 px.*stem 'small'"),
        (dict(crop_size=14, stem="small"), "crop_size 14 is too small.*15 px"),
    ],
)
def test_invalid_values_raise_a_clear_user_error(changes, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**changes)
    with pytest.raises(UserError, match=match):
        cfg.from_dict({k: str(v) if not isinstance(v, tuple) else list(v) for k, v in changes.items()})


def test_small_crops_with_the_small_stem_are_fine():
    assert TrainConfig(stem="small", crop_size=28).crop_size == 28
    assert TrainConfig(stem="small", crop_size=8, overlapping_pool=False).crop_size == 8
    assert TrainConfig(crop_size=64).crop_size == 64


def test_json_file(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"lr": 0.02, "towers": 1, "lrn": False, "milestones_epochs": [5, 7]}))
    c = cfg.from_dict(cfg.load_file(path))
    assert (c.lr, c.towers, c.lrn, c.milestones_epochs) == (0.02, 1, False, (5, 7))


def test_toml_file(tmp_path):
    pytest.importorskip("tomllib")
    path = tmp_path / "recipe.toml"
    path.write_text('lr = 0.02\ntowers = 1\nlrn = false\nmilestones_epochs = [5, 7]\nactivation = "tanh"\nepochs = 3\n')
    c = cfg.from_dict(cfg.load_file(path))
    assert (c.lr, c.towers, c.lrn, c.milestones_epochs, c.activation, c.epochs) == (0.02, 1, False, (5, 7), "tanh", 3)


def test_saved_config_json_round_trips(tmp_path):
    c = TrainConfig(lr=0.02, milestones_epochs=(3, 4), stem="small", crop_size=28)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(c.to_dict()))
    assert cfg.from_dict(cfg.load_file(path)) == c


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        cfg.load_file(tmp_path / "missing.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{lr: 0.1")
    with pytest.raises(UserError, match="not valid JSON"):
        cfg.load_file(bad_json)
    not_a_table = tmp_path / "list.json"
    not_a_table.write_text("[1, 2]")
    with pytest.raises(UserError, match="table"):
        cfg.load_file(not_a_table)
    if cfg.tomllib is not None:
        bad_toml = tmp_path / "bad.toml"
        bad_toml.write_text("lr = = 0.1")
        with pytest.raises(UserError, match="not valid TOML"):
            cfg.load_file(bad_toml)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"learning_rate": 0.1}')
    with pytest.raises(UserError, match="learning_rate"):
        cfg.from_dict(cfg.load_file(unknown))


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_recipe_flags(parser)
    return parser


def test_every_field_is_a_flag():
    parser = _parser()
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= flags
    args = parser.parse_args([])
    assert cfg.from_args(args) == TrainConfig()  # no flags: the paper's recipe


def test_the_help_groups_the_flags_with_a_first_run_first():
    """Every key names a group of ``alexnet train --help``; the first two groups hold what a first run
    needs, at most 16 flags; each flag's help and default fit the one line argparse gives it at 80
    columns (78 less its help column, 24)."""
    from alexnet.commands import train

    assert {f.metadata["group"] for f in dataclasses.fields(TrainConfig)} == set(cfg.HELP_GROUPS)
    sub = argparse.ArgumentParser(prog="alexnet").add_subparsers()
    train.register(sub)
    groups = [g for g in sub.choices["train"]._action_groups if g.title in cfg.HELP_GROUPS.values()]
    assert [g.title for g in groups] == list(cfg.HELP_GROUPS.values())
    first = [a.option_strings[0] for g in groups[:2] for a in g._group_actions]
    assert first[:8] == ["--out", "--config", "--resume", "--recipe", "--epochs", "--batch-size-per-device", "--lr",
                         "--device"] and len(first) <= 16
    too_long = [a.option_strings[0] for g in groups for a in g._group_actions if len(a.help) > 78 - 24]
    assert too_long == []


def test_flags_are_coerced():
    args = _parser().parse_args(
        ["--lr", "0.05", "--towers", "1", "--no-lrn", "--compile", "--milestones-epochs", "10,20", "--dropout", "0"]
    )
    c = cfg.from_args(args)
    assert (c.lr, c.towers, c.lrn, c.compile, c.milestones_epochs, c.dropout) == (0.05, 1, False, True, (10, 20), 0.0)


def test_bad_choice_flag_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--towers", "3"])
    assert "towers" in capsys.readouterr().err


def test_from_args_order_base_then_file_then_flags(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"lr": 0.1, "epochs": 5, "towers": 1}))
    base = TrainConfig(lr=0.5, epochs=7, seed=3, momentum=0.8)
    args = _parser().parse_args(["--config", str(path), "--lr", "0.2"])
    c = cfg.from_args(args, base)
    assert c.lr == 0.2  # the flag beats the file
    assert c.epochs == 5 and c.towers == 1  # the file beats the base
    assert c.seed == 3 and c.momentum == 0.8  # the base where neither says
    assert c.weight_decay == 5e-4  # the paper where nothing says
    c = cfg.from_args(_parser().parse_args(["--config", str(path)]))
    assert (c.lr, c.epochs, c.towers) == (0.1, 5, 1)


def test_bad_flag_value_is_a_user_error():
    with pytest.raises(UserError, match="lr"):
        cfg.from_args(_parser().parse_args(["--lr", "fast"]))
    with pytest.raises(UserError, match="epochs must be at least 1"):
        cfg.from_args(_parser().parse_args(["--epochs", "0"]))


@pytest.mark.slow  # a second Python process that imports torch
def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "alexnet", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--cpu-threads" in result.stdout, result.stderr[-2000:]
    result = subprocess.run([sys.executable, "-m", "alexnet", "train", "nowhere", "--out", "x", "--epochs", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "epochs must be at least 1" in result.stderr
