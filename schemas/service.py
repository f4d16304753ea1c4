"""The extraction service's request and response bodies (``rner serve``, ``tasks.service``): what
``POST /v1/extract`` reads and answers, and the OpenAPI document at ``/docs`` is generated from.

Usage::

    ExtractRequest(texts=["Ada Lovelace met Charles Babbage."], labels=["person", {"name": "location"}])
    ExtractRequest.model_validate_json(body)     # strict: "0.5" is not a temperature, unknown fields are refused
    ExtractResponse(model="ner", results=[TextResult(...)], usage=TokenUsage(...))
    ServeConfig(server={"kind": "vllm", "model": "store:models/re/abc"}, labels=["person"])   # rner serve --config

A request is one text (``text``) or a batch (``texts``), never both; every text gets the same entity types.
Entities are ``schemas.records.Entity``: ``text[start:end] == entity.text`` in the text as sent.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, StringConstraints, model_validator

from schemas.base import Config, Name, Record, Seq
from schemas.configs import Endpoint, PromptStyle, VLLMLaunch
from schemas.records import Entity, Mention

TOKEN_ENV = "RNER_SERVE_TOKEN"
"""The environment variable holding the service's bearer token (unset: no authentication)."""

OneLine = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\r\n]*$")]


class EntityType(Record):
    """An entity type with a one-line definition (as the paper's input allows)."""

    name: Name
    """The type, as the answer names it ("person")."""
    definition: OneLine | None = None
    """What counts as one ("a real or fictional human being"): listed under the types in the prompt (the ``rner``
    instruction; refused for ``paper``, which has no place for it)."""


class ExtractOptions(Record):
    """How to generate; the defaults are the CLI's (greedy decoding, no reasoning returned)."""

    reasoning: bool = False
    """Return the model's reasoning (all chunks', joined) with each result."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    """Sampling temperature; 0 is greedy."""
    reasoning_budget: NonNegativeInt | None = None
    """At most this many tokens of reasoning per chunk (budget forcing, ``tasks.budget``); 0 answers without
    reasoning; ``None``: no budget. Needs a model asked to reason (``with_cot``)."""


class ExtractRequest(Record):
    """Entities of ``labels`` in one text or a batch."""

    text: str | None = None
    """One text (give this or ``texts``)."""
    texts: Seq[str] | None = None
    """A batch of texts, answered in order (give this or ``text``)."""
    labels: Seq[Name | EntityType] = ()
    """The entity types: names, or ``{"name", "definition"}`` objects; none: the service's ``--labels``."""
    options: ExtractOptions = ExtractOptions()
    """Generation options."""

    @model_validator(mode="after")
    def _one_text_or_a_batch(self) -> Self:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give `text` (one) or `texts` (a batch), exactly one of them")
        if self.texts is not None and not self.texts:
            raise ValueError("`texts` is empty")
        for i, name in enumerate(self.names):
            if not name.strip():
                raise ValueError(f"labels.{i}: a blank entity type")
        return self

    @property
    def batch(self) -> tuple[str, ...]:
        """The texts to extract from, in order."""
        return (self.text,) if self.text is not None else self.texts or ()

    @property
    def names(self) -> tuple[str, ...]:
        """The entity types' names, in the order given."""
        return tuple(label if isinstance(label, str) else label.name for label in self.labels)

    @property
    def definitions(self) -> dict[str, str]:
        """The entity types' definitions given, by name."""
        return {t.name: t.definition for t in self.labels if isinstance(t, EntityType) and t.definition}


class TokenUsage(Record):
    """Tokens the model server counted."""

    prompt_tokens: NonNegativeInt = 0
    """Tokens read, over every chunk's prompt."""
    completion_tokens: NonNegativeInt = 0
    """Tokens generated, reasoning included."""


class TextResult(Record):
    """What was found in one text."""

    entities: Seq[Entity]
    """Sorted by position; ``start``/``end`` are character offsets into the text as sent."""
    ungrounded: Seq[Mention]
    """Mentions the model gave that are not in the text, or not of a type asked for."""
    failures: Seq[str] = ()
    """One line per chunk whose answer did not parse (that chunk contributes nothing)."""
    chunks: NonNegativeInt
    """How many chunks the text was read in (long texts: more than one, never truncated)."""
    reasoning: str | None = None
    """The model's reasoning, when ``options.reasoning`` asked for it."""
    usage: TokenUsage
    """Tokens spent on this text."""


class ExtractResponse(Record):
    """One result per text, in the request's order."""

    model: Name
    """The model that answered (its name at the model server)."""
    results: Seq[TextResult]
    """One per text."""
    usage: TokenUsage
    """The sum over ``results``."""


class ErrorResponse(Record):
    """Any error: what was wrong, naming the field or the limit."""

    detail: str
    """One line."""


class ServeConfig(Config):
    """``rner serve``: the extraction service in front of one model server."""

    ADDED = frozenset({"state_budget"})

    server: Annotated[Endpoint | VLLMLaunch, Field(discriminator="kind")]
    """The model server: a running OpenAI-compatible ``endpoint``, or a ``vllm`` server the service starts (and
    stops when it stops)."""
    labels: Seq[Name] = ()
    """Entity types for requests that give none."""
    tokenizer: Name | None = None
    """The model's tokenizer (texts are fitted into the context by counting tokens); default: the launch's model
    (an endpoint needs it given)."""
    context_tokens: PositiveInt | None = None
    """The model's context window; default: the launch's ``max_model_len`` (an endpoint needs it given)."""
    max_tokens: PositiveInt = 1024
    """Answer budget per chunk, reasoning included."""
    prompt: PromptStyle = "rner"
    """The instruction the model was trained with (``tasks.prompts``)."""
    with_cot: bool = True
    """The model reasons before it answers (``False``: trained on answers alone)."""
    state_budget: bool = False
    """State a request's ``options.reasoning_budget`` in the prompt ("Think for at most N tokens."), as a model
    trained with GRPO's ``target_length`` was asked; requests without a budget are asked as usual."""
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` in a container)."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    """Port to listen on (0: any free one)."""
    concurrency: PositiveInt = 64
    """Chat requests in flight to the model server, over all service requests (its continuous batching does
    the rest)."""
    max_queue: PositiveInt = 256
    """Service requests admitted at once (running or waiting for the model server); more are answered 429."""
    max_batch: PositiveInt = 64
    """Texts in one request."""
    max_body_bytes: PositiveInt = 1_000_000
    """Size of a request body; larger ones are answered 413 before they are read whole."""
    request_timeout_s: PositiveFloat = 300.0
    """A request not answered in this time is answered 504."""
    max_retries: NonNegativeInt = 2
    """Retries of a failed chat request to the model server (connection errors, 429, 5xx)."""
    shutdown_grace_s: PositiveFloat = 120.0
    """On SIGTERM: how long requests in flight may still take to finish (new connections are refused)."""
