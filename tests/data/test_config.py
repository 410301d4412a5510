"""DataConfig YAML: strict keys with suggestions, types, source options, presets, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmgpt.data.config import ConfigError, DataConfig, dump_data_config, load_data_config, preset_names


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


SOURCE = {"name": "llava", "format": "llava", "path": "llava/detail_23k.json"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"vision_langauge": []}, "unknown key 'vision_langauge' (did you mean 'vision_language'?)"),
        (
            {"vision_language": [{**SOURCE, "imgaes": "x"}]},
            "vision_language[0]: unknown key 'imgaes' (did you mean 'images'?)",
        ),
        ({"vision_language": [{**SOURCE, "cap": "five"}]}, "vision_language[0].cap: expected int, got str 'five'"),
        ({"vision_language": [{**SOURCE, "cap": True}]}, "expected int, got bool"),
        ({"vision_language": [{**SOURCE, "on_error": "ignore"}]}, "'ignore' is not one of ['raise', 'skip']"),
        ({"vision_language": [{"name": "x", "format": "llava"}]}, "missing required key(s) 'path'"),
        ({"vision_language": [{**SOURCE, "format": "lava"}]}, "unknown format 'lava' (did you mean 'llava'?)"),
        (
            {"vision_language": [{**SOURCE, "format": "aokvqa", "options": {"varient": "rationale"}}]},
            "unknown key 'varient' (did you mean 'variant'?)",
        ),
        (
            {"vision_language": [{**SOURCE, "format": "aokvqa", "options": {"variant": "mc"}}]},
            "options.variant: 'mc' is not one of ['rationale', 'multiple_choice']",
        ),
        ({"language_ratio": 2}, "language_ratio must be in [0, 1]"),
        ({"vision_language": [SOURCE], "language": [SOURCE]}, "two sources are named 'llava'"),
        ({"vision_language": {"a": 1}}, "vision_language: expected a list"),
        ({"max_length": 1}, "max_length must be >= 2"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, data, message):
    with pytest.raises(ConfigError) as caught:
        load_data_config(write(tmp_path, data))
    assert message in str(caught.value)
    assert str(tmp_path / "data.yaml") in str(caught.value)


def test_every_shipped_preset_loads():
    assert "multimodal-gpt" in preset_names()
    for name in preset_names():
        cfg = load_data_config(name)
        assert cfg.root is None and cfg.tokenizer is None  # both come from the user (--root, --tokenizer)


def test_the_paper_preset_is_the_papers_mix():
    cfg = load_data_config("multimodal-gpt")
    caps = {s.name: s.cap for s in cfg.vision_language}
    assert caps == {
        "llava_detail": None,
        "llava_complex_reasoning": None,
        "llava_conversation": None,
        "minigpt4_cc_sbu_align": None,
        "aokvqa": 5000,
        "coco_caption": 512,
        "ocr_vqa": 512,
    }
    assert [(s.name, s.format, s.cap) for s in cfg.language] == [
        ("dolly", "dolly", None),
        ("alpaca_gpt4", "alpaca", None),
    ]
    assert (cfg.max_length, cfg.language_ratio, cfg.batch_size, cfg.language_batch_size) == (512, 1.0, 1, 1)
    assert all(not Path(s.path).is_absolute() for s in cfg.sources)
    with pytest.raises(ConfigError, match="pass --root DIR"):
        cfg.resolve(cfg.sources[0].path)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'multimodal-gpt'"):
        load_data_config("multimodal_gpt")


def test_paths_in_a_user_file_are_relative_to_it(tmp_path):
    cfg = load_data_config(write(tmp_path, {"root": "data", "tokenizer": "tok", "vision_language": [SOURCE]}))
    assert cfg.root == str(tmp_path / "data") and cfg.tokenizer == str(tmp_path / "tok")
    assert cfg.resolve("llava/detail_23k.json") == tmp_path / "data/llava/detail_23k.json"
    assert cfg.resolve("/abs/file.json") == Path("/abs/file.json")
    no_root = load_data_config(write(tmp_path, {"vision_language": [SOURCE]}))
    assert no_root.root == str(tmp_path)


def test_dump_round_trips(tmp_path):
    cfg = load_data_config("multimodal-gpt")
    cfg.root = str(tmp_path)
    path = tmp_path / "copy.yaml"
    path.write_text(dump_data_config(cfg))
    again = load_data_config(path)
    assert again == cfg and isinstance(again, DataConfig)
