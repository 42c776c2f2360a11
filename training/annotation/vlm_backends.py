"""Vision-language model backends for the annotator: an OpenAI-compatible endpoint or local transformers.

Both take a ``VLMRequest`` (prompt text + RGB images) and return the reply text. Transport
problems (timeouts, connection errors, HTTP 429/5xx) are retried here with backoff; whether the
reply *content* is acceptable is the annotator's business.

The OpenAI-compatible backend uses only the standard library, so serving Qwen3-VL with vLLM
(``vllm serve Qwen/Qwen3-VL-8B-Instruct``) or SGLang and pointing ``endpoint`` at it is enough.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image


@dataclass
class VLMRequest:
    """One prompt with its images (uint8 H×W×3), shown to the model before the text."""

    prompt: str
    images: list[np.ndarray] = field(default_factory=list)
    system: str | None = None


class VLMBackend(Protocol):
    """Anything that answers a ``VLMRequest`` with text."""

    name: str
    model: str

    def complete(self, request: VLMRequest) -> str:
        """Return the model's reply; raise BackendError when it cannot be obtained."""
        ...


class BackendError(RuntimeError):
    """The backend could not produce a reply (after its own retries)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: delay ``backoff_s * backoff_factor**k``, capped."""

    max_attempts: int = 3
    backoff_s: float = 1.0
    backoff_factor: float = 2.0
    max_backoff_s: float = 30.0

    def __post_init__(self):
        if self.max_attempts < 1 or self.backoff_s < 0 or self.backoff_factor < 1:
            raise ValueError("RetryPolicy needs max_attempts >= 1, backoff_s >= 0 and backoff_factor >= 1.")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        return min(self.backoff_s * self.backoff_factor**attempt, self.max_backoff_s)


class RateLimiter:
    """Spaces calls at least ``1 / requests_per_second`` apart across threads (None: unlimited)."""

    def __init__(self, requests_per_second: float | None):
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError("requests_per_second must be > 0 or None.")
        self.interval = 0.0 if requests_per_second is None else 1.0 / requests_per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until this caller's slot comes."""
        if self.interval == 0.0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        time.sleep(max(0.0, slot - now))


def image_data_url(image: np.ndarray, image_format: str = "png") -> str:
    """Encode an RGB uint8 image as a base64 ``data:`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format=image_format.upper())
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/{image_format.lower()};base64,{encoded}"


@dataclass(frozen=True)
class OpenAIConfig:
    """Settings of an OpenAI-compatible chat endpoint (base URL ``…/v1`` or the full ``…/chat/completions``)."""

    endpoint: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    temperature: float = 0.2
    max_tokens: int = 1024
    requests_per_second: float | None = None
    max_concurrency: int = 4
    retry: RetryPolicy = RetryPolicy()
    image_format: str = "png"

    def __post_init__(self):
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.endpoint!r}."
            )
        if not self.model:
            raise ValueError(
                "OpenAIConfig needs the served model name (--model), e.g. Qwen/Qwen3-VL-8B-Instruct."
            )
        if self.timeout_s <= 0 or self.max_concurrency < 1:
            raise ValueError("timeout_s must be > 0 and max_concurrency >= 1.")

    @property
    def url(self) -> str:
        """The chat-completions URL."""
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


# Statuses worth retrying: request timeout, rate limiting and server-side failures.
_RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIChatBackend:
    """Chat completions with image parts over HTTP, with retries, timeouts, a rate limit and a concurrency cap."""

    name = "openai"

    def __init__(self, config: OpenAIConfig):
        self.config = config
        self.model = config.model
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._limiter = RateLimiter(config.requests_per_second)

    def _body(self, request: VLMRequest) -> bytes:
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(im, self.config.image_format)}}
            for im in request.images
        ]
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, object]] = (
            [{"role": "system", "content": request.system}] if request.system else []
        )
        messages.append({"role": "user", "content": content})
        body = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        return json.dumps(body).encode("utf-8")

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        http_request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(http_request, timeout=self.config.timeout_s) as response:
            payload = json.loads(response.read().decode("utf-8"))
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(
                f"the endpoint answered without choices[0].message.content: {str(payload)[:200]}"
            ) from exc
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content or "")

    def complete(self, request: VLMRequest) -> str:
        """POST the request; retry timeouts, connection errors and 408/429/5xx; raise BackendError at the end."""
        body = self._body(request)
        last_error = "no attempt made"
        for attempt in range(self.config.retry.max_attempts):
            self._limiter.acquire()
            try:
                with self._slots:
                    return self._post(body)
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}: {exc.read()[:200].decode('utf-8', 'replace')}"
                if exc.code not in _RETRY_STATUSES:
                    raise BackendError(f"{self.config.url} rejected the request ({last_error}).") from exc
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                OSError,
                json.JSONDecodeError,
            ) as exc:
                reason = getattr(exc, "reason", exc)
                last_error = f"{type(exc).__name__}: {reason}"
            if attempt + 1 < self.config.retry.max_attempts:
                time.sleep(self.config.retry.delay(attempt))
        raise BackendError(
            f"{self.config.url} failed {self.config.retry.max_attempts} times; last error {last_error}."
        )


GenerateFn = Callable[[list[dict], list[Image.Image]], str]


class TransformersBackend:
    """A local vision-language model through ``AutoProcessor`` + ``AutoModelForImageTextToText``.

    The model folder must ship a chat template (Qwen2.5-VL, Qwen3-VL, …). ``generate`` may be
    given instead of a model path: a callable ``(messages, images) -> str`` that receives the
    chat messages (images as ``{"type": "image"}`` parts, in order) and the PIL images; it replaces
    loading and running the model, which is how the prompt and parse path is tested offline.
    Calls are serialised because one local model runs one generation at a time.
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        max_new_tokens: int = 1024,
        generate: GenerateFn | None = None,
    ):
        if model_path is None and generate is None:
            raise ValueError(
                "TransformersBackend needs model_path (a local model folder) or a generate callable."
            )
        self.model: str = model_path or str(getattr(generate, "__name__", "callable"))
        self.model_path, self.device, self.dtype, self.max_new_tokens = (
            model_path,
            device,
            dtype,
            max_new_tokens,
        )
        self._generate = generate
        self._loaded: tuple | None = None
        self._lock = threading.Lock()

    @staticmethod
    def messages(request: VLMRequest) -> list[dict]:
        """Chat messages in the transformers multimodal format, images first, then the prompt."""
        content = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.prompt}]
        messages = (
            [{"role": "system", "content": [{"type": "text", "text": request.system}]}]
            if request.system
            else []
        )
        return messages + [{"role": "user", "content": content}]

    def _load(self):
        if self._loaded is None:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            processor = AutoProcessor.from_pretrained(self.model_path)
            dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
            model = (
                AutoModelForImageTextToText.from_pretrained(self.model_path, dtype=dtype)
                .to(self.device)
                .eval()
            )
            self._loaded = (processor, model)
        return self._loaded

    def _run_model(self, messages: list[dict], images: list[Image.Image]) -> str:
        import torch

        processor, model = self._load()
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=images or None, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

    def complete(self, request: VLMRequest) -> str:
        """Generate a reply greedily; errors from the model become BackendError."""
        images = [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in request.images]
        messages = self.messages(request)
        with self._lock:
            try:
                run = self._generate or self._run_model
                return str(run(messages, images))
            except (RuntimeError, ValueError, OSError) as exc:
                raise BackendError(f"local model {self.model} failed: {exc}") from exc
