"""The evaluation tests share the small world of the data tests."""

from tests.data.world.conftest import tokenizer, world

__all__ = ["tokenizer", "world"]
