"""Generation with a trained (or released, or any Hugging Face) model: loading, streaming, ``HuatuoChat``, the
terminal session, and a local OpenAI-compatible server.

    from huatuo.inference import HuatuoChat
    chat = HuatuoChat.from_pretrained("outputs/train/<time>/export")
    chat.chat([{"role": "user", "content": "肚子疼怎么办？"}])
"""

from __future__ import annotations

from typing import Any

__all__ = ["GenerationSettings", "HuatuoChat", "load_for_inference"]


def __getattr__(name: str) -> Any:
    # Lazy: importing one module of this package (the server helper, the session) need not load the chat stack.
    if name == "HuatuoChat":
        from huatuo.inference.chat import HuatuoChat

        return HuatuoChat
    if name == "GenerationSettings":
        from huatuo.inference.generation import GenerationSettings

        return GenerationSettings
    if name == "load_for_inference":
        from huatuo.inference.loading import load_for_inference

        return load_for_inference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
