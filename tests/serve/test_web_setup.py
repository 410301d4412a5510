"""The browser demo's set-up without a browser (the adapter it opens on, its temporary folder, escaping) and the
one line `mmgpt serve` prints."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from mmgpt.chat import ChatModel
from mmgpt.commands.serve import banner
from mmgpt.data.images import CorruptImageError, ImageTooLargeError
from mmgpt.serve.app import ServeConfig
from mmgpt.serve.web import build_demo, image_problem, shown


def dropdown(demo: gr.Blocks) -> gr.Dropdown:
    return next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.elem_id == "model")


def test_the_demo_opens_on_the_first_adapter_and_says_so(chat_model):
    demo = build_demo(chat_model)
    assert dropdown(demo).value == "one" and dropdown(demo).choices == [(n, n) for n in ("tiny", "one", "two")]
    intro = next(b for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.elem_id == "intro")
    assert "Model: `tiny`, answering with its LoRA adapter `one`" in intro.value
    demo.cleanup()


def test_without_adapters_it_opens_on_the_base(chat_model):
    bare = ChatModel(chat_model.model, chat_model.tokenizer, chat_model.transform, name="plain")
    demo = build_demo(bare)
    assert dropdown(demo).value == "plain"
    demo.cleanup()


def test_the_example_folder_goes_with_the_demo(chat_model):
    demo = build_demo(chat_model)
    folder = Path(demo.cleanup.peek()[2][0])
    assert folder.name.startswith("mmgpt-examples-") and (folder / "shapes.png").is_file()
    assert demo.cleanup.atexit  # also at interpreter exit (the server stopping)
    demo.cleanup()
    assert not folder.exists()


def test_text_and_errors_are_shown_as_written():
    assert shown("where does <image> go? <b>x</b> & y") == "where does &lt;image&gt; go? &lt;b&gt;x&lt;/b&gt; &amp; y"
    cut = CorruptImageError("/tmp/gradio/ab12/cut.jpg", "truncated or corrupt header (x)", "replace the file")
    assert (
        image_problem(cut, 100)
        == "cut.jpg: truncated or corrupt header (x); attach a complete PNG, JPEG, GIF or WebP file"
    )
    big = ImageTooLargeError("/tmp/gradio/ab12/big.png", "9x9 = 81 pixels is over the budget of 50", "shrink it")
    assert (
        image_problem(big, 50)
        == "big.png: 9x9 = 81 pixels is over the budget of 50; this demo takes images of at most 50 pixels"
    )


def test_serve_prints_one_banner_line_with_the_urls_and_the_models():
    line = banner(ServeConfig(), [["tiny-world", "tuned"]])
    expected = "API http://127.0.0.1:8000/v1 | web demo http://127.0.0.1:8000/ | models: tiny-world + adapters tuned"
    assert line == f"mmgpt serve: {expected}"
    api_only = banner(ServeConfig(host="::1", port=9000, web_path=None), [["base"]])
    assert api_only == "mmgpt serve: API http://[::1]:9000/v1 | no web demo | models: base"
    several = banner(ServeConfig(web_path=None), [["multimodal-gpt"], ["minigpt4"], ["mplug-owl", "poet"]])
    assert several.endswith("| models: multimodal-gpt; minigpt4; mplug-owl + adapters poet")


def test_the_server_removes_the_example_folder_when_it_shuts_down(chat_model, tmp_path, monkeypatch):
    # uvicorn re-raises SIGTERM after shutting down (no atexit then): the app's shutdown removes the folder.
    import tempfile

    from fastapi.testclient import TestClient

    from mmgpt.serve.app import build_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with TestClient(build_app(chat_model, ServeConfig())) as http:
        assert http.get("/health").status_code == 200
        [folder] = tmp_path.glob("mmgpt-examples-*")
        assert (folder / "shapes.png").is_file()
    assert not folder.exists()
