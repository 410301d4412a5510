"""Serving: one process, two faces over one shared :class:`~mmgpt.chat.ChatModel`.

``api.py`` is an OpenAI-compatible HTTP API (``/v1/chat/completions``, ``/v1/models``), ``web.py`` the browser
demo (gradio), ``app.py`` mounts both on one FastAPI app and runs it with uvicorn. Both faces drive
:class:`~mmgpt.chat.ChatSession`; ``limits.py`` holds the safety limits and the admission queue.
"""
