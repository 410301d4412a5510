"""`mmgpt serve` loads its models on a passing thread, so the main thread keeps no OpenMP pool that would slow the
batching scheduler's thread on a CPU (the reason and the measured cost: ``on_a_passing_thread``'s docstring)."""

from __future__ import annotations

import argparse
import threading

import pytest

from mmgpt.commands import serve as serve_command
from mmgpt.serve import loading
from mmgpt.serve.loading import on_a_passing_thread


def test_a_passing_thread_gives_back_the_result_or_the_error():
    assert on_a_passing_thread(lambda: threading.current_thread().name) == "mmgpt-load"
    assert not any(t.name == "mmgpt-load" for t in threading.enumerate())  # it ended

    def broken() -> None:
        raise FileNotFoundError("no such model: x")

    with pytest.raises(FileNotFoundError, match="no such model: x"):
        on_a_passing_thread(broken)


def test_serve_loads_its_models_off_the_main_thread(monkeypatch, capsys):
    loaded_on: list[str] = []

    def load_chat_model(spec: str, **_) -> None:
        loaded_on.append(threading.current_thread().name)
        raise ValueError(f"{spec}: not a model directory")  # the command stops here, as for a bad --model

    monkeypatch.setattr(loading, "load_chat_model", load_chat_model)
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    assert serve_command.run(parser.parse_args(["--model", "nowhere"])) == 2
    assert loaded_on == ["mmgpt-load"] and "error: nowhere: not a model directory" in capsys.readouterr().out
