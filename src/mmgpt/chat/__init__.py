"""Chat: multi-turn conversations with images over one shared model - the terminal, the browser demo and the API.

``model.py``: :class:`ChatModel`, the loaded model every session shares (its tokenizer, image transform, named
adapters and the lock that serialises model calls). ``cache.py``: :class:`ConversationCache`, what a session has
run and which of it stays valid when the conversation changes (the model answers; chat only asks).
``session.py``: :class:`ChatSession`, one conversation (turns, images, context budget) streaming its answers from
the one decoding loop of ``mmgpt.generate``. ``scheduler.py``: continuous batching - ``start_batching(chat_model)``
and every session's turns decode together in one batch.
"""

from mmgpt.chat.model import ChatModel
from mmgpt.chat.scheduler import start_batching, stop_batching
from mmgpt.chat.session import ChatSession, ContextOverflowError, FinishReason, InvalidMessageError, Reply, Turn

__all__ = [
    "ChatModel",
    "ChatSession",
    "ContextOverflowError",
    "FinishReason",
    "InvalidMessageError",
    "Reply",
    "Turn",
    "start_batching",
    "stop_batching",
]
