"""Training configs: YAML + key=value overrides at any depth, data by path, strict keys with suggestions."""

import pytest
import yaml

from mmgpt.config import ConfigError
from mmgpt.train.config import load_train_config, parse_overrides, save_train_config


def test_overrides_parse_as_yaml_scalars_at_any_depth():
    assert parse_overrides(["optimizer.lr=0.5", "max_steps=3", "lora.lm_mlp=true", "run_dir=out"]) == {
        "optimizer": {"lr": 0.5},
        "max_steps": 3,
        "lora": {"lm_mlp": True},
        "run_dir": "out",
    }
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["optimizer.lr"])


def test_file_with_data_by_path_and_overrides(tmp_path, data_config, tiny_model_dir):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "data": str(data_config), "run_dir": "run"}))
    cfg = load_train_config(path, ["optimizer.lr=1e-4", "data.batch_size=3", "gradient_accumulation=4"])
    assert cfg.optimizer.lr == 1e-4 and cfg.gradient_accumulation == 4
    assert cfg.data.batch_size == 3 and cfg.data.vision_language[0].format == "llava"
    assert cfg.run_dir == str(tmp_path / "run")  # relative to the config file
    assert cfg.lora.r == 16 and cfg.lora.alpha == 16 and cfg.lora.dropout == 0.0  # the paper's LoRA
    assert cfg.optimizer.weight_decay == 0.1 and cfg.optimizer.warmup_steps == 100
    save_train_config(cfg, tmp_path / "saved.yaml")
    again = load_train_config(tmp_path / "saved.yaml")
    assert again == cfg


def test_unknown_keys_name_the_closest_valid_one(train_config):
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'.*valid keys"):
        load_train_config({**train_config, "learning_rate": 1})
    with pytest.raises(ConfigError, match=r"'wieght_decay' \(did you mean 'weight_decay'\?\)"):
        load_train_config(train_config, ["optimizer.wieght_decay=0"])
    with pytest.raises(ConfigError, match=r"'max_step' \(did you mean 'max_steps'\?\)"):
        load_train_config(train_config, ["max_step=3"])
    with pytest.raises(ConfigError, match=r"'bf32' is not one of"):
        load_train_config(train_config, ["precision=bf32"])
    with pytest.raises(ConfigError, match="no such file and no such preset"):
        load_train_config({**train_config, "data": "missing.yaml"})
