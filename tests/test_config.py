"""The typed run configuration: shipped recipes parse, unknown keys and bad values are errors naming the
key, overrides take their natural types, ``auto`` hyperparameters follow the documented rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from honing.config import TrainConfig, build_config, describe_fields, parse_override
from honing.errors import ConfigError
from honing.train.auto import auto_batch_size, auto_epochs, auto_learning_rate, resolve_hyperparameters

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))


def test_the_expected_recipes_ship():
    names = {p.name for p in RECIPES}
    assert {"docstring_module_lora.yaml", "docstring_module_full.yaml", "docstring_module_dora.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_points_at_real_files(recipe):
    cfg = build_config(recipe)
    assert isinstance(cfg, TrainConfig)
    for key in ("data", "eval_data"):
        value = getattr(cfg, key)
        if value is not None:
            assert (ROOT / value).is_file(), f"{recipe.name}: {key} {value} does not exist"
    # Every key the recipe sets is a schema key (extra keys would have raised): check the values stuck.
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    assert cfg.method == raw.get("method", "lora")


def test_demo_recipe_is_the_fast_lora_setup():
    cfg = build_config(ROOT / "examples" / "recipes" / "docstring_module_lora.yaml")
    assert cfg.method == "lora" and cfg.dtype == "auto"
    assert cfg.max_steps is not None and cfg.lora.top_layers is not None


def test_dora_recipe_switches_on_rslora_and_dora():
    cfg = build_config(ROOT / "examples" / "recipes" / "docstring_module_dora.yaml")
    assert cfg.lora.use_rslora and cfg.lora.use_dora


@pytest.mark.parametrize(("values", "overrides", "key", "why"), [
    ({"data": "d.jsonl", "learning_rat": 1e-4}, [], "learning_rat", "unknown key (did you mean learning_rate?)"),
    ({"data": "d.jsonl"}, ["lora.rank=8"], "lora.rank", "unknown key"),
    ({"data": "d.jsonl"}, ["method=dora"], "method", "'lora', 'qlora' or 'full'"),
    ({"data": "d.jsonl"}, ["epochs=0"], "epochs", "positive integer or 'auto'"),
    ({"data": "d.jsonl"}, ["epochs=three"], "epochs", "positive integer or 'auto'"),
    ({"data": "d.jsonl"}, ["threads=0"], "threads", "positive integer or 'auto'"),
    ({"data": "d.jsonl"}, ["learning_rate=2"], "learning_rate", "(0, 1)"),
    ({"data": "d.jsonl"}, ["lora.dropout=1.5"], "lora.dropout", "less than 1"),
    ({"data": "d.jsonl"}, ["dtype=fp16"], "dtype", "'auto', 'bf16' or 'fp32'"),
    ({"data": "d.jsonl"}, ["batch_size=4", "micro_batch_size=8"], "micro_batch_size", "cannot exceed"),
    ({}, [], "data", "required key is missing"),
])
def test_bad_configuration_names_the_key_and_why(values, overrides, key, why):
    with pytest.raises(ConfigError) as err:
        build_config(values=values, overrides=overrides)
    msg = str(err.value)
    assert f"{key}:" in msg and why in msg, msg


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("data: d.jsonl\nlora:\n  r: [1\n")
    with pytest.raises(ConfigError, match=r"r.yaml line \d+: not valid YAML"):
        build_config(bad)
    bad.write_text("data: d.jsonl\nlora:\n  alpah: 3\n")
    with pytest.raises(ConfigError, match=r"r.yaml\): lora.alpah: unknown key \(did you mean lora.alpha\?\)"):
        build_config(bad)
    with pytest.raises(ConfigError, match="recipe not found"):
        build_config(tmp_path / "missing.yaml")


def test_overrides_win_and_take_natural_types(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: d.jsonl\nlora:\n  r: 4\nepochs: 2\n")
    cfg = build_config(recipe, overrides=["lora.r=8", "learning_rate=1e-4", "merge=true",
                                          "lora.target_modules=[q_proj, v_proj]", "max_grad_norm=null"],
                       values={"epochs": 5})
    assert cfg.lora.r == 8 and cfg.epochs == 5 and cfg.learning_rate == pytest.approx(1e-4)
    assert cfg.merge is True and cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.max_grad_norm is None
    assert parse_override("out=runs/a=b") == ("out", "runs/a=b")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("lora.r")


def test_every_key_is_documented():
    rows = describe_fields()
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert {"lora.r", "lora.use_dora", "lora.top_layers", "dtype", "epochs"} <= set(keys)
    assert all(desc for _, _, desc in rows)


def test_cli_help_documents_every_key_once():
    from typer.testing import CliRunner

    from honing.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], terminal_width=400).output
    for key, _, _ in describe_fields():
        assert len(re.findall(rf"(?<![\w.]){re.escape(key)} \(default:", out)) == 1, key


@pytest.mark.parametrize(("n", "epochs"), [(10, 10), (20, 5), (33, 3), (500, 3), (8333, 3), (10_000, 2), (30_000, 1)])
def test_auto_epochs_follow_the_openai_rule(n, epochs):
    assert auto_epochs(n) == epochs


@pytest.mark.parametrize(("n", "batch"), [(10, 1), (499, 1), (1000, 2), (4000, 8), (1_000_000, 256)])
def test_auto_batch_size(n, batch):
    assert auto_batch_size(n) == batch


def test_auto_learning_rate_scales_with_batch_within_the_band():
    assert auto_learning_rate("lora", 4) == pytest.approx(2e-4)
    assert auto_learning_rate("lora", 16) == pytest.approx(4e-4)
    assert auto_learning_rate("lora", 256) == pytest.approx(1e-3)  # clamped
    assert auto_learning_rate("full", 1) == pytest.approx(5e-6)  # clamped


def test_resolved_hyperparameters_mark_what_was_auto():
    cfg = build_config(values={"data": "d.jsonl", "batch_size": 8})
    hp = resolve_hyperparameters(cfg, 982)
    assert (hp.epochs, hp.batch_size, hp.micro_batch_size, hp.grad_accumulation) == (3, 8, 8, 1)
    assert hp.steps_per_epoch == 123 and hp.total_steps == 369
    assert "batch_size" not in hp.chosen and {"epochs", "learning_rate"} <= set(hp.chosen)
    assert "(auto)" in hp.describe()
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        resolve_hyperparameters(build_config(values={"data": "d", "batch_size": 6, "micro_batch_size": 4}), 100)


def test_auto_micro_batch_fits_a_token_budget_per_forward_on_cpu():
    from honing.train.auto import auto_micro_batch_size

    assert auto_micro_batch_size(8, 1) == 8  # no length known: the largest divisor up to 8
    assert auto_micro_batch_size(8, 1, mean_tokens=90) == 4  # 512 // 90 = 5 -> divisor 4
    assert auto_micro_batch_size(4, 1, mean_tokens=511) == 1  # long examples: one per forward
    assert auto_micro_batch_size(4, 1, mean_tokens=511, on_gpu=True) == 4
    assert auto_micro_batch_size(64, 1, mean_tokens=500, on_gpu=True) == 32  # 16k-token packed rows on a GPU
    assert auto_micro_batch_size(64, 1, mean_tokens=2000, on_gpu=True) == 8
    assert auto_micro_batch_size(12, 2, mean_tokens=100) == 3  # per process 6, at most 5 -> 3
