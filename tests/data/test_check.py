"""`mmgpt data check`: exact counts on every fixture, fatal problems, and the CLI's exit codes."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from rich.console import Console

from mmgpt.cli import main
from mmgpt.data.check import check_data, print_report
from mmgpt.data.config import load_data_config
from mmgpt.data.conversation import single_turn
from mmgpt.data.tokenize import tokenize_conversation
from tests.data import formats


@pytest.fixture
def config_path(tmp_path, tokenizer_dir):
    return formats.write_config(tmp_path, tokenizer_dir)


def by_name(report):
    return {r.source.name: r for r in report.sources}


def test_report_counts_every_source(config_path, tokenizer):
    report = check_data(load_data_config(config_path), tokenizer)
    assert report.ok, report.fatal
    r = by_name(report)
    rows = {name: (x.stats.rows, x.stats.conversations, x.stats.missing_images, x.usable) for name, x in r.items()}
    assert rows == {
        "llava": (3, 2, 1, 2),
        "minigpt4": (2, 2, 0, 2),
        "aokvqa": (3, 3, 0, 3),
        "coco": (2, 2, 0, 2),
        "ocr_vqa": (4, 6, 1, 6),
        "dolly": (2, 2, 0, 2),
        "alpaca": (2, 2, 0, 2),
    }
    assert dict(r["ocr_vqa"].stats.skipped) == {"missing image": 1, "not in split 'train'": 1}
    # Shares after caps: A-OKVQA keeps 2 of 3, so the vision-language stream holds 2+2+2+2+6 = 14 samples.
    assert {n: r[n].used for n in r} == {
        "llava": 2,
        "minigpt4": 2,
        "aokvqa": 2,
        "coco": 2,
        "ocr_vqa": 6,
        "dolly": 2,
        "alpaca": 2,
    }
    assert r["ocr_vqa"].share == pytest.approx(6 / 14) and r["aokvqa"].share == pytest.approx(2 / 14)
    assert r["dolly"].share == pytest.approx(0.5)
    # Token lengths are the untruncated lengths of the samples.
    dolly_lengths = [
        len(tokenize_conversation(single_turn("Name a primary colour.", "Red."), tokenizer)),
        len(
            tokenize_conversation(
                single_turn("When did Virgin Australia start?", "In 2000.", input="Virgin Australia began in 2000."),
                tokenizer,
            )
        ),
    ]
    assert sorted(r["dolly"].lengths) == sorted(dolly_lengths)
    assert r["dolly"].percentile(50) == min(dolly_lengths) and r["dolly"].percentile(99) == max(dolly_lengths)


def test_truncated_masked_and_mismatched_samples_are_counted(tmp_path, tokenizer_dir, tokenizer):
    data = tmp_path / "data"
    rows = [
        {"instruction": "word " * 600, "input": "", "output": "fully masked at 512 tokens"},
        {"instruction": "short", "input": "", "output": "long answer " * 600},
        {"instruction": "a literal <image> in text", "input": "", "output": "x"},
        {"instruction": "fine", "input": "", "output": "ok"},
    ]
    path = formats.write_config(tmp_path, tokenizer_dir)
    formats.dump(data / "alpaca_gpt4" / "alpaca_gpt4_data.json", rows)
    report = check_data(load_data_config(path), tokenizer)
    alpaca = by_name(report)["alpaca"]
    assert alpaca.dropped == {"fully_masked": 1, "image_mismatch": 1}
    assert alpaca.truncated == 1 and alpaca.usable == 2 and max(alpaca.lengths) > 512
    assert report.ok  # drops are reported, not fatal


def test_fatal_problems(tmp_path, tokenizer_dir, tokenizer):
    path = formats.write_config(tmp_path, tokenizer_dir)
    llava = tmp_path / "data/llava/conversation_58k.json"
    llava.write_text(json.dumps([{"id": "1", "image": "000000215677.jpg"}]))
    (tmp_path / "data/dolly/databricks-dolly-15k.jsonl").unlink()
    report = check_data(load_data_config(path), tokenizer)
    assert not report.ok
    r = by_name(report)
    assert "conversation_58k.json row 0, field 'conversations': missing" in r["llava"].fatal
    assert "no such file" in r["dolly"].fatal
    assert r["coco"].fatal is None


def test_no_language_sources_while_the_ratio_asks_for_them(tmp_path, tokenizer_dir, tokenizer):
    report = check_data(load_data_config(formats.write_config(tmp_path, tokenizer_dir, language=[])), tokenizer)
    assert report.fatal == ["language_ratio > 0 but no language sources: add some or set language_ratio: 0"]


def test_print_report_lists_skips_and_shares(config_path, tokenizer):
    console = Console(width=200, record=True)
    print_report(check_data(load_data_config(config_path), tokenizer), console)
    text = console.export_text()
    assert " p50   p90   p99   max   trunc.   masked   mism." in text and "truncation to 512" in text
    assert "ocr_vqa: skipped 1 rows: not in split 'train' (e.g. key '000000003')" in text
    assert "42.9%" in text and "data check passed" in text


def test_cli_exit_codes(config_path, tmp_path, tokenizer_dir, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["data", "check", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "data check passed" in out and "vision-language   ocr_vqa    all      6   42.9%" in out

    (tmp_path / "data/llava/conversation_58k.json").write_text("[{}]")
    assert main(["data", "check", str(config_path)]) == 1
    assert "FATAL" in capsys.readouterr().out

    assert main(["data", "check", "multimodal-gpt", "--root", str(tmp_path)]) == 2
    assert "no tokenizer" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file and no such preset" in capsys.readouterr().out

    assert main(["data", "check", "multimodal-gpt", "--tokenizer", str(tokenizer_dir)]) == 1
    assert "no data root is set; set 'root:' in the YAML or pass --root DIR" in capsys.readouterr().out


def test_a_file_that_is_not_an_image_fails_the_default_check_naming_file_row_and_field(
    config_path, tmp_path, tokenizer
):
    image = tmp_path / "data/cc_sbu_align/image/7.jpg"
    image.write_text("<html>not found</html>")
    report = check_data(load_data_config(config_path), tokenizer)  # headers are opened by default
    minigpt4 = by_name(report)["minigpt4"]
    assert not report.ok and minigpt4.usable == 1 and minigpt4.broken_images == 1
    assert minigpt4.broken_examples == [
        f"annotations[1], field 'image_id': {image}: not an image PIL can identify (it looks like text or HTML: "
        "a failed download saved under an image name?); replace the file (re-download or re-export it)"
    ]
    assert "training stops at the first" in minigpt4.fatal and "'on_error: skip' on source 'minigpt4'" in minigpt4.fatal
    console = Console(width=400, record=True)
    print_report(report, console)
    text = console.export_text()
    listed = f"minigpt4: skipped 1 rows: broken image (e.g. annotations[1], field 'image_id': {image}: not an image"
    assert listed in text
    assert "FATAL minigpt4: 1 row(s) with a broken image" in text and "data check failed" in text


def test_decode_images_also_finds_files_cut_after_their_header(config_path, tmp_path, tokenizer):
    image = tmp_path / "data/cc_sbu_align/image/7.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(image)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    cfg = load_data_config(config_path)
    assert by_name(check_data(cfg, tokenizer))["minigpt4"].broken_images == 0  # the header is whole
    minigpt4 = by_name(check_data(cfg, tokenizer, decode_images=True))["minigpt4"]
    assert minigpt4.usable == 1 and minigpt4.broken_images == 1
    assert "7.jpg: truncated or corrupt (image file is truncated" in minigpt4.broken_examples[0]
