"""Pydantic wire models of the OpenAI HTTP API subset that neocloud serves.

Shared by the serving runtime (which answers these routes inside a replica) and the gateway
(which routes ``/v1/...`` by the ``model`` field and reads ``usage`` for metering).
Field names and meanings follow the public OpenAI API reference
(https://platform.openai.com/docs/api-reference): ``/v1/models``, ``/v1/embeddings``,
``/v1/completions`` and ``/v1/chat/completions``.

Request models accept unknown fields (``extra="allow"``): clients send options this subset
does not model, and the runtime decides which of them it refuses. Response models are
plain data; ``usage`` token counts are integers (tokens of the model's own tokenizer).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# ----------------------------------------------------------------------------- common


class Usage(_Response):
    """Token counts of one request: ``prompt_tokens`` read, ``completion_tokens`` generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class StreamOptions(_Request):
    """``stream_options``: with ``include_usage`` the last chunk before ``[DONE]`` carries
    ``usage`` and an empty ``choices`` list."""

    include_usage: bool = False


class ModelCard(_Response):
    """One entry of ``GET /v1/models``; ``created`` is a Unix time in seconds."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "neocloud"


class ModelList(_Response):
    """``GET /v1/models`` response."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----------------------------------------------------------------------------- embeddings


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``.

    ``input`` is one string, a list of strings, or token arrays (refused by models whose
    tokenizer differs from the client's). ``encoding_format`` ``base64`` returns each vector
    as the base64 of its little-endian float32 bytes.
    """

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(gt=0)] | None = None
    user: str | None = None


class Embedding(_Response):
    """One vector: floats, or a base64 string of float32 little-endian bytes."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(_Response):
    """``POST /v1/embeddings`` response; ``usage.completion_tokens`` is absent in OpenAI's
    schema and always 0 here."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# ----------------------------------------------------------------------------- generation


class ChatMessage(_Request):
    """One chat message. ``content`` may be a string or a list of ``{"type": "text"}`` parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class _Sampling(_Request):
    """Sampling options common to completions and chat completions.

    ``temperature`` 0 means greedy decoding; ``top_p`` is nucleus sampling mass; ``stop``
    holds up to 4 strings that end the output (not included in it); ``seed`` makes sampling
    repeatable; ``n`` is the number of choices.
    """

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        """``stop`` as a list (empty strings dropped); at most 4 entries as in OpenAI."""
        if self.stop is None:
            return []
        items = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in items if s]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is one string or a list of one string."""

    prompt: str | list[str]


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``; ``max_completion_tokens`` is the newer name of
    ``max_tokens`` and wins when both are given."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


FinishReason = Literal["stop", "length"]


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class CompletionResponse(_Response):
    """``POST /v1/completions`` response and, with ``object="text_completion"`` too, each
    streamed chunk (OpenAI uses the same object name for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionResponse(_Response):
    """``POST /v1/chat/completions`` response (non-streamed)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    """One streamed ``chat.completion.chunk``; the usage chunk has ``choices == []``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


__all__ = [
    "AssistantMessage",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatDelta",
    "ChatMessage",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "FinishReason",
    "ModelCard",
    "ModelList",
    "StreamOptions",
    "Usage",
]
