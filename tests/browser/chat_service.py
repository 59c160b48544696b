"""A scripted chat model for the console's playground test: it speaks the OpenAI
``/v1/chat/completions`` route (answer, ``usage``) with a fixed reply, so a browser test
gets a chat deployment in seconds instead of loading a language model."""

from __future__ import annotations

import time
from typing import Any

from neocloud.serving import Service, endpoint

#: The reply starts with this; the user's last message follows it, reversed word by word.
PREFIX = "scripted reply:"


class ScriptedChat(Service):
    @endpoint(path="/v1/chat/completions")
    def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int = 16
             ) -> dict[str, Any]:
        last = str(messages[-1].get("content", "")) if messages else ""
        words = last.split()
        reply = " ".join([PREFIX, *reversed(words)][: max_tokens + 1])
        return {
            "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": len(words), "completion_tokens": len(reply.split()),
                      "total_tokens": len(words) + len(reply.split())},
        }
