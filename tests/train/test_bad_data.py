"""Bad training data never crashes and never hides (issue 22): broken images stop a run naming file, row and field
(``on_error: raise``) or are skipped, counted and named per source at the end and in metrics.jsonl (``skip``); a
malformed row is one message and exit status 1; ``--resume`` says where it continued from; paths on the command line
resolve as docs/training.md says."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from mmgpt.cli import main
from mmgpt.train.config import load_train_config
from mmgpt.train.run import train
from tests.train.conftest import write_world


def broken_world(root: Path, *, on_error: str) -> Path:
    """The tiny training world with images 1, 3, 5, ... not images any more, image 2 missing, and ``on_error``."""
    config = write_world(root)
    for i in range(1, 16, 2):
        (root / "images" / f"{i:03d}.png").write_text("<html>404 Not Found</html>")
    (root / "images" / "002.png").unlink()
    data = json.loads(config.read_text())
    data["vision_language"][0]["on_error"] = on_error
    config.write_text(json.dumps(data))
    return config


def test_skipped_images_are_counted_named_and_printed_per_source(train_config, tmp_path):
    cfg = load_train_config({**train_config, "data": str(broken_world(tmp_path / "world", on_error="skip"))})
    out = io.StringIO()
    result = train(cfg, progress_stream=out)
    assert result.steps == 4
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    skipped = last["skipped"]["llava"]
    broken = skipped["counts"]["broken image"]
    assert last["step"] == 4 and list(last["skipped"]) == ["llava"] and broken >= 1
    assert skipped["counts"]["missing image (rows)"] == 1
    examples = skipped["examples"]
    assert examples[0] == str(tmp_path / "world" / "images" / "002.png")  # the missing one, found while reading
    assert all("png: not an image PIL can identify (it looks like text or HTML" in e for e in examples[1:])
    line = next(line for line in out.getvalue().splitlines() if line.startswith("llava: skipped"))
    assert f"{broken:,} broken image" in line and "1 missing image (rows)" in line and "(e.g. " in line


def test_a_broken_image_stops_the_run_with_one_message_naming_file_row_and_field(train_config, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    data = broken_world(tmp_path / "world", on_error="raise")
    config.write_text(json.dumps({**train_config, "data": str(data)}))
    assert main(["train", str(config)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]  # after the run's first progress line: the one message, no traceback
    assert "Traceback" not in "\n".join(lines) and sum(line.startswith("error:") for line in lines) == 1
    assert err.startswith(f"error: {tmp_path / 'world' / 'llava.json'} row ") and ", field 'image': image " in err
    assert "not an image PIL can identify" in err and "set 'on_error: skip' on this source" in err


def test_a_malformed_row_is_one_message_and_exit_status_1(train_config, tmp_path, capsys):
    world = tmp_path / "world"
    data = write_world(world)
    rows = json.loads((world / "llava.json").read_text())
    del rows[3]["conversations"]
    (world / "llava.json").write_text(json.dumps(rows))
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({**train_config, "data": str(data)}))
    assert main(["train", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {world / 'llava.json'} row 3, field 'conversations': missing. Fix the row, or set 'on_error: skip' "
        "on this source to skip and count such rows"
    )


def test_resume_says_which_checkpoint_it_continued_from(train_config, tmp_path):
    cfg = load_train_config(train_config)
    train(cfg)
    other = tmp_path / "again"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step-00000002", other / "checkpoints" / "step-00000002")
    out = io.StringIO()
    train(load_train_config({**train_config, "run_dir": str(other)}), resume=True, progress_stream=out)
    assert f"resumed from {other / 'checkpoints' / 'step-00000002'} at step 2 of 4" in out.getvalue()
    fresh, out = tmp_path / "fresh", io.StringIO()
    train(load_train_config({**train_config, "run_dir": str(fresh)}), resume=True, progress_stream=out)
    assert f"resume: no checkpoint in {fresh} yet; starting at step 0" in out.getvalue()


def test_the_cli_prints_the_resume_line(train_config, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({**train_config, "max_steps": 2}))
    assert main(["train", str(config)]) == 0
    config.write_text(json.dumps({**train_config, "max_steps": 3}))
    assert main(["train", str(config), "--resume"]) == 0
    assert (
        f"resumed from {tmp_path / 'run' / 'checkpoints' / 'step-00000002'} at step 2 of 3" in capsys.readouterr().err
    )


def test_paths_in_the_yaml_are_relative_to_it_and_overrides_to_the_current_directory(
    train_config, tmp_path, monkeypatch
):
    """What docs/training.md says: a YAML's paths are relative to the YAML's folder, `key=value` paths to the current
    directory, as any shell argument."""
    (tmp_path / "configs").mkdir()
    shutil.copy(train_config["data"], tmp_path / "configs" / "data.yaml")
    shutil.copy(train_config["data"], tmp_path / "here.yaml")
    yaml_config = tmp_path / "configs" / "run.yaml"
    yaml_config.write_text(json.dumps({**train_config, "run_dir": "runs/a", "data": "data.yaml"}))
    monkeypatch.chdir(tmp_path)
    from_yaml = load_train_config(yaml_config)
    assert from_yaml.run_dir == str(tmp_path / "configs" / "runs" / "a")
    overridden = load_train_config(yaml_config, ["run_dir=runs/b", "data=here.yaml"])
    assert Path(overridden.run_dir).resolve() == tmp_path / "runs" / "b"
    assert from_yaml.data.root == str(tmp_path / "configs") and overridden.data.root == str(tmp_path)  # here.yaml


def test_a_source_with_nothing_usable_is_one_message_too(train_config, tmp_path, capsys):
    data = broken_world(tmp_path / "world", on_error="skip")
    for image in (tmp_path / "world" / "images").iterdir():
        image.write_bytes(b"")
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({**train_config, "data": str(data)}))
    assert main(["train", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: every sample of stream 'vision_language' is dropped ({'llava': {'broken image': ")
    assert err.endswith("run `mmgpt data check` on this configuration")
