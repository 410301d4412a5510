"""The browser demo (gradio): several images per message, multi-turn streaming chat, sampling controls,
regenerate / undo / clear, examples, the model or adapter per conversation, and the exact prompt the model sees.

Each browser session owns one :class:`~mmgpt.chat.ChatSession` (kept in a ``gr.State``, freed an hour after the
tab closes), so every turn reuses that conversation's cache; between turns the session waits in the server's
:class:`~mmgpt.serve.conversations.IdleConversations`, so the caches of all tabs (and of the API's conversations)
stay under one bound - a tab whose cache was dropped prefills its history again at its next turn. All sessions
share the served models with the API: with batching on, their answers decode in the same batch as the API's. With
several models served (e.g. the three systems of ``mmgpt experiment systems``) the *Model* menu lists them all;
picking another model carries the conversation over to it (its prompt style, its image transform, a cache of its
own).

A bad message (an unreadable image, a literal ``<image>``, a prompt over the context) is a warning toast, never an
error state: the conversation stays as it was, the input keeps its text and its good images, and the next message
goes through. Text is shown as written (HTML-escaped, so ``<image>`` stays visible). A server started with adapters
opens on the first one.
"""

from __future__ import annotations

import contextlib
import html
import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from mmgpt.chat import ChatModel, ChatSession, ContextOverflowError, InvalidMessageError
from mmgpt.data.images import ImageError, ImageTooLargeError
from mmgpt.data.styles import get_style
from mmgpt.generate import GenerationConfig
from mmgpt.serve.conversations import IdleConversations, tab_key
from mmgpt.serve.limits import ServeLimits
from mmgpt.serve.metrics import ServerMetrics
from mmgpt.serve.models import ServedModels

log = logging.getLogger("mmgpt.serve")

SESSION_TTL_S = 3600
# Phrased as the tuning data asks (the paper's Table 3 caption instruction, the world's OCR question), which is what
# a tiny model tuned for minutes understands; a real model takes any phrasing.
EXAMPLE_QUESTIONS = (
    "What do you see in this image?",
    "How many shapes are there?",
    "What is written in the image?",
)
EXAMPLE_SCENE = "web-example:3"  # a scene of the generated world: three shapes and the word "moon"


def example_images(folder: Path) -> list[str]:
    """Example pictures written once per server: a scene of the embedded default's world (docs/world.md), which
    the tuned tiny-world model can answer about."""
    from mmgpt.world.render import save_scene
    from mmgpt.world.scene import sample_scene

    path = save_scene(sample_scene(EXAMPLE_SCENE, id="example"), folder / "shapes.png")
    return [str(path)]


def shown(text: str) -> str:
    """Text as the chat panel and toasts must show it: they render HTML, which would swallow ``<image>``."""
    return html.escape(text, quote=False)


def image_problem(error: ImageError, max_pixels: int) -> str:
    """An unreadable upload named by its file name (not the server's upload path), with a fix the user can do."""
    if isinstance(error, ImageTooLargeError):
        return f"{Path(error.path).name}: {error.problem}; this demo takes images of at most {max_pixels:,} pixels"
    return f"{Path(error.path).name}: {error.problem}; attach a complete PNG, JPEG, GIF or WebP file"


def build_demo(
    models: ServedModels | ChatModel,
    *,
    title: str | None = None,
    concurrency_limit: int = 1,
    conversations: IdleConversations | None = None,
    metrics: ServerMetrics | None = None,
) -> gr.Blocks:
    """The demo over ``models`` (one model, or several to choose from); up to ``concurrency_limit`` answers generate
    at once (across all tabs): with a batching model they decode together, without one they take turns per token.
    Tabs' sessions wait between turns in ``conversations`` (default: a bound of their own, ``ServeLimits``'); each
    answer is counted in ``metrics`` when given."""
    models = ServedModels.of(models)
    if conversations is None:
        conversations = IdleConversations(ServeLimits().idle_cache_bytes)
    names, selected = models.names, models.default
    first = models.chat_models[0]
    if title is None:  # one model: the system whose template it answers in; several: the framework
        single = len(models.chat_models) == 1
        title = get_style(first.model.prompt_format.style).system if single else "mmgpt"

    def session_for(session: ChatSession | None, name: str) -> ChatSession:
        """The tab's session, on the model ``name`` picks (the conversation carried over when that is another)."""
        served = models.get(name) or models.get(selected)
        if session is None:
            return ChatSession(served.chat_model, adapter=served.adapter)
        if session.chat_model is not served.chat_model:
            try:
                return session.continued_on(served.chat_model, adapter=served.adapter)
            except ImageError as error:  # an image of the conversation is gone: start afresh on the new model
                gr.Warning(shown(f"the conversation could not move to {name} ({error.problem}); it starts afresh"))
                return ChatSession(served.chat_model, adapter=served.adapter)
        session.set_adapter(served.adapter)
        return session

    def config(temperature: float, top_p: float, max_tokens: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p))

    def history_of(session: ChatSession) -> list[dict]:
        messages: list[dict] = []
        for turn in session.turns:
            messages += [{"role": "user", "content": {"path": str(p)}} for p in turn.images]
            messages.append({"role": "user", "content": shown(turn.text)})
            if turn.answer is not None:
                messages.append({"role": "assistant", "content": shown(turn.answer)})
        return messages

    def unchanged(session: ChatSession, message: str, box=None) -> tuple:
        """The outputs after a refused message: a warning toast, everything else as it was."""
        gr.Warning(shown(message))
        return box if box is not None else gr.skip(), history_of(session), session, session.prompt_text()

    answering: set[int] = set()  # ids of the tabs' sessions with a turn running
    # Reentrant: a turn's generator finalised by the garbage collector on this thread may release its session here.
    answering_lock = threading.RLock()

    def claim(session: ChatSession) -> bool:
        """Mark ``session`` as having a turn running; False when it already has one."""
        with answering_lock:
            if id(session) in answering:
                return False
            answering.add(id(session))
            return True

    @contextlib.contextmanager
    def turn_of(session: ChatSession | None, model: str) -> Iterator[ChatSession | None]:
        """The tab's session for one turn (None: the tab already has a turn running - a second one would share its
        session), out of the idle conversations until the turn ends, then parked again."""
        if session is not None and not claim(session):
            yield None
            return
        claimed = [] if session is None else [session]
        if session is not None:
            conversations.take(tab_key(session))
        current = None
        try:
            current = session_for(session, model)
            if current is not session:  # a new tab's session, or the conversation moved to another model
                claim(current)
                claimed.append(current)
            yield current
        finally:
            if current is not None:  # parked before released: a next turn finds it and takes it out
                conversations.park(tab_key(current), current, weak=True)
            with answering_lock:
                for each in claimed:
                    answering.discard(id(each))

    def busy(session: ChatSession | None) -> bool:
        with answering_lock:
            return session is not None and id(session) in answering

    def stream_answer(session: ChatSession, stream: Iterator[str], model: str, started: float) -> Iterator[tuple]:
        for notice in session.notices:
            gr.Info(notice)
        session.notices.clear()
        history = history_of(session)
        history.append({"role": "assistant", "content": ""})
        yield gr.MultimodalTextbox(value=None), history, session, session.prompt_text()
        first_token, failed = None, False
        try:
            for delta in stream:
                first_token = first_token or time.perf_counter() - started
                history[-1]["content"] += shown(delta)
                yield gr.MultimodalTextbox(value=None), history, session, session.prompt_text()
        except Exception:  # the model failed mid-answer: say so, keep the partial answer, stay usable
            failed = True
            log.exception("the demo's generation failed")
            yield unchanged(session, "the answer stopped: the model failed (the server's log has the details)")
            return
        finally:
            stream.close()  # a tab gone mid-answer: its row leaves the batch now
            if metrics is not None and session.last is not None:
                seconds = time.perf_counter() - started
                metrics.answered(model, "web", session.last, first_token, seconds, failed=failed)
        yield gr.MultimodalTextbox(value=None), history_of(session), session, session.prompt_text()

    still_coming = "an answer is still coming in this tab; wait for it (or reload the page) first"

    def respond(message: dict, session: ChatSession | None, model: str, temperature, top_p, max_tokens):
        started = time.perf_counter()
        with turn_of(session, model) as current:
            if current is None:
                yield unchanged(session, still_coming)
                return
            yield from answer(current, message, model, started, temperature, top_p, max_tokens)

    def answer(session: ChatSession, message: dict, model: str, started: float, temperature, top_p, max_tokens):
        text = (message or {}).get("text", "").strip()
        files = [f if isinstance(f, str) else f["path"] for f in (message or {}).get("files", [])]
        if not text and not files:
            yield unchanged(session, "type a question (and attach images if you like)")
            return
        try:
            stream = session.send(text, images=files, config=config(temperature, top_p, max_tokens))
        except ImageError as error:
            # Keep the text and the good images; drop the file that failed.
            kept = [f for f in files if f != error.path]
            box = gr.MultimodalTextbox(value={"text": text, "files": kept})
            yield unchanged(session, image_problem(error, session.chat_model.transform.max_pixels), box)
            return
        except (InvalidMessageError, ContextOverflowError) as error:
            yield unchanged(session, str(error), gr.MultimodalTextbox(value={"text": text, "files": files}))
            return
        yield from stream_answer(session, stream, model, started)

    def regenerate(session: ChatSession | None, model: str, temperature, top_p, max_tokens):
        started = time.perf_counter()
        with turn_of(session, model) as current:
            if current is None:
                yield unchanged(session, still_coming)
                return
            if not current.turns:
                yield unchanged(current, "nothing to regenerate yet")
                return
            try:
                stream = current.regenerate(config(temperature, top_p, max_tokens))
            except (InvalidMessageError, ContextOverflowError) as error:
                yield unchanged(current, str(error))
                return
            yield from stream_answer(current, stream, model, started)

    def undo(session: ChatSession | None):
        if busy(session):  # the turn it would take back is still being written
            gr.Warning(still_coming)
        elif session is not None:
            session.undo()
        return ([], None, "") if session is None else (history_of(session), session, session.prompt_text())

    def clear(session: ChatSession | None):
        if busy(session):
            gr.Warning(still_coming)
            return history_of(session), session, session.prompt_text()
        if session is not None:
            session.reset()
        return [], session, ""

    examples_folder = Path(tempfile.mkdtemp(prefix="mmgpt-examples-"))
    images = example_images(examples_folder)
    selection = f"Model: `{first.name}`" + (
        f", answering with its LoRA adapter `{selected}` (choose another, or the base, under *Model / LoRA adapter*)."
        if selected != first.name
        else "."
    )
    if len(models.chat_models) > 1:
        others = ", ".join(f"`{m.name}`" for m in models.chat_models[1:])
        selection += f" Also served: {others} - pick one under *Model / LoRA adapter* to continue the chat with it."

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"## {title}\nMulti-turn chat about images. Attach one or more images to any message; each becomes one "
            f"`<image>` in the prompt. {selection}",
            elem_id="intro",
        )
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chatbot")
                box = gr.MultimodalTextbox(
                    file_types=["image"],
                    file_count="multiple",
                    placeholder="Ask about the images, or attach more...",
                    show_label=False,
                    elem_id="message",
                )
                with gr.Row():
                    regenerate_button = gr.Button("Regenerate", elem_id="regenerate")
                    undo_button = gr.Button("Undo", elem_id="undo")
                    clear_button = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=1):
                model = gr.Dropdown(names, value=selected, label="Model / LoRA adapter", elem_id="model")
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
                max_tokens = gr.Slider(1, 512, value=128, step=1, label="Max new tokens")
        with gr.Accordion("The exact prompt", open=False):
            prompt = gr.Textbox(label="Prompt", lines=14, interactive=False, elem_id="prompt")
        gr.Examples(
            examples=[[{"text": question, "files": images}] for question in EXAMPLE_QUESTIONS],
            inputs=[box],
            label="Examples",
        )
        controls = [model, temperature, top_p, max_tokens]
        outputs = [box, chatbot, session, prompt]
        # One limit for both: answering and regenerating take the same kind of place in the batch.
        box.submit(
            respond, [box, session, *controls], outputs, concurrency_limit=concurrency_limit, concurrency_id="answer"
        )
        regenerate_button.click(
            regenerate, [session, *controls], outputs, concurrency_limit=concurrency_limit, concurrency_id="answer"
        )
        undo_button.click(undo, [session], [chatbot, session, prompt])
        clear_button.click(clear, [session], [chatbot, session, prompt])
    # The example pictures go when the server does (at exit, or when the demo is garbage-collected).
    demo.cleanup = weakref.finalize(demo, shutil.rmtree, examples_folder, ignore_errors=True)
    return demo
