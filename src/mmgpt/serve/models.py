"""The models one server answers for, by name: one or more :class:`~mmgpt.chat.ChatModel` (each a base with its
LoRA adapters).

``mmgpt serve --model A --model B`` serves several models in one process - the three tuned systems of
``mmgpt experiment systems``, or a base and a fine-tune of another architecture: the API picks by the request's
``model``, the web demo by its *Model* menu. Each model keeps its own scheduler (its batch), prompt style and
image transform; the admission limits are the process's. Names: each model's, then its adapters', all distinct.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmgpt.chat import ChatModel


@dataclass(frozen=True)
class Served:
    """What a served name means: this model, with this adapter (None: the model itself)."""

    chat_model: ChatModel
    adapter: str | None


class ServedModels:
    def __init__(self, chat_models: Sequence[ChatModel]) -> None:
        if not chat_models:
            raise ValueError("a server needs at least one model")
        self.chat_models = list(chat_models)
        self._by_name: dict[str, Served] = {}
        for chat_model in self.chat_models:
            for name, adapter in [(chat_model.name, None), *((a, a) for a in chat_model.adapters)]:
                if name in self._by_name:
                    raise ValueError(
                        f"two served models are named {name!r}; give one another name (--model NAME=PATH, "
                        f"--adapter NAME=PATH)"
                    )
                self._by_name[name] = Served(chat_model, adapter)

    @classmethod
    def of(cls, models: ServedModels | ChatModel | Sequence[ChatModel]) -> ServedModels:
        if isinstance(models, ServedModels):
            return models
        return cls([models] if isinstance(models, ChatModel) else models)

    @property
    def names(self) -> list[str]:
        """Every servable name: each model, then its adapters."""
        return list(self._by_name)

    @property
    def default(self) -> str:
        """What the demo opens on: the first model's first adapter (the tuned model, when given), else that model."""
        first = self.chat_models[0]
        return first.adapters[0] if first.adapters else first.name

    def get(self, name: str) -> Served | None:
        return self._by_name.get(name)
