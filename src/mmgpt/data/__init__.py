"""The data pipeline: dataset rows -> Conversation -> template segments -> tokens and labels -> batches.

See docs/data.md. The modules, in data-flow order: ``sources`` (one adapter per published format),
``conversation``, ``templates``, ``tokenize``, ``images``, ``mixture``, ``collate``, ``loader``, ``check``;
``config`` holds :class:`DataConfig`.
"""

from mmgpt.data.collate import Batch, collate
from mmgpt.data.config import DataConfig, SourceConfig, load_data_config
from mmgpt.data.conversation import Conversation, ImageRef, Message, single_turn
from mmgpt.data.images import CLIP_MEAN, CLIP_STD, ImageError, ImageTransform, load_image
from mmgpt.data.templates import Segment, render, render_prompt, render_text
from mmgpt.data.tokenize import (
    ConversationTokenizer,
    SampleDropped,
    TokenizedSample,
    tokenize_conversation,
    tokenize_prompt,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "Batch",
    "Conversation",
    "ConversationTokenizer",
    "DataConfig",
    "ImageError",
    "ImageRef",
    "ImageTransform",
    "Message",
    "SampleDropped",
    "Segment",
    "SourceConfig",
    "TokenizedSample",
    "collate",
    "load_data_config",
    "load_image",
    "render",
    "render_prompt",
    "render_text",
    "single_turn",
    "tokenize_conversation",
    "tokenize_prompt",
]
