"""Request and response schemas of `npbert serve`, and the parsing of a raw request body into a request.

The request follows the model catalog's scoring schema for question answering:

    {"input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"},
     "parameters": {"top_k": 1}}

`question` and `context` are both strings or both equal-length lists of strings. `parameters` takes the
question-answering pipeline's own parameters (transformers 4.57.6 `pipelines/question_answering.py`),
except `batch_size`, which belongs to the server.

Every rejection is a `BadRequest` carrying an HTTP status and one line naming what was wrong, so the
HTTP layer only has to turn it into a JSON response. The limits (characters, list length, sequence
length) come from the server's settings through pydantic's validation context.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..attributions import APPROXIMATIONS, DEFAULT_N_STEPS, DEFAULT_NOISE, DEFAULT_SAMPLES, METHODS
from ..limits import DEFAULT_MAX_ATTRIBUTION_WINDOWS, DEFAULT_MAX_WINDOWS


class BadRequest(Exception):
    """A request the server refuses: `status` is the HTTP status (4xx), `message` names the problem."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.problems, self.headers = status, message, problems or [message], headers


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Sizes are in characters (Python str length, i.e. code points)."""

    max_body_bytes: int = 1 << 20
    max_context_chars: int = 20_000
    max_question_chars: int = 1_000
    max_items: int = 32
    max_windows: int = (
        DEFAULT_MAX_WINDOWS  # per question: windows of max_seq_len tokens its context makes (docs/serving.md)
    )
    max_seq_len: int = 512  # the model's position table: a longer window would index past it
    max_top_k: int = 20
    max_request_windows: int = 64  # over all questions of a request: bounds one request's work (docs/serving.md)
    max_target_bytes: int = 8192  # the request target (path and query): longer ones get 414
    max_header_bytes: int = 16384  # all header names and values: more get 431
    # POST /v1/attributions: windows per question, integration steps, SmoothGrad samples (docs/attributions.md)
    max_attribution_windows: int = DEFAULT_MAX_ATTRIBUTION_WINDOWS
    max_n_steps: int = 300
    max_samples: int = 100


# A request nests 3 levels ({"input_data": {"question": [...]}}); JSON nested deeper than this is refused
# before it is decoded (Python's decoder recurses, and 1,000 levels exhaust its stack).
MAX_JSON_DEPTH = 32
# The largest number a request needs is a parameter such as top_k; Python refuses to convert integers of
# more than 4300 digits at all (and converting one takes time quadratic in its length).
MAX_INTEGER_DIGITS = 100


# --- the request --------------------------------------------------------------------------------------

_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def a_json_type(value: Any) -> str:
    name = json_type(value)
    if name == "null":
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def _check_text(text: Any, where: str, max_chars: int) -> None:
    """`where` is "" for a lone string, "item 3 " for a list item."""
    if not isinstance(text, str):
        raise PydanticCustomError(
            "text_type", "{where}must be a string, got {got}", {"where": where, "got": json_type(text)}
        )
    if not text.strip():
        raise PydanticCustomError("text_empty", "{where}must not be empty or blank", {"where": where})
    if len(text) > max_chars:
        raise PydanticCustomError(
            "text_too_long",
            "{where}has {n} characters, over the server's limit of {limit}",
            {"where": where, "n": len(text), "limit": max_chars},
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800" is valid JSON but not text
        raise PydanticCustomError(
            "text_surrogate",
            "{where}contains an unpaired surrogate at character {pos}",
            {"where": where, "pos": e.start},
        ) from None


class InputData(BaseModel):
    """One question and its context, or equal-length lists of them (answered in order)."""

    model_config = ConfigDict(extra="forbid")

    question: Union[str, list[str]] = Field(
        description="A question, or a list of questions.", examples=["What's my name?"]
    )
    context: Union[str, list[str]] = Field(
        description="The text holding the answer, or a list of them (same length as `question`).",
        examples=["My name is John and I live in Seattle"],
    )

    @field_validator("question", "context", mode="before")
    @classmethod
    def _texts(cls, value: Any, info: ValidationInfo) -> Any:
        limits = (info.context or {}).get("limits", Limits())
        max_chars = limits.max_context_chars if info.field_name == "context" else limits.max_question_chars
        if isinstance(value, str):
            _check_text(value, "", max_chars)
        elif isinstance(value, list):
            if not value:
                raise PydanticCustomError("list_empty", "the list must not be empty")
            if len(value) > limits.max_items:
                raise PydanticCustomError(
                    "list_too_long",
                    "the list has {n} items, over the server's limit of {limit}",
                    {"n": len(value), "limit": limits.max_items},
                )
            for i, text in enumerate(value):
                _check_text(text, f"item {i} ", max_chars)
        else:
            raise PydanticCustomError(
                "texts_type", "must be a string or a list of strings, got {got}", {"got": json_type(value)}
            )
        return value

    @model_validator(mode="after")
    def _same_shape(self) -> "InputData":
        q, c = self.question, self.context
        if isinstance(q, str) != isinstance(c, str):
            raise PydanticCustomError(
                "shape_mismatch",
                "question and context must both be strings or both be lists (got {q} and {c})",
                {"q": a_json_type(q), "c": a_json_type(c)},
            )
        if isinstance(q, list) and len(q) != len(c):
            raise PydanticCustomError(
                "length_mismatch",
                "question has {nq} items but context has {nc}: the lists must have equal lengths",
                {"nq": len(q), "nc": len(c)},
            )
        return self

    def pairs(self) -> tuple[list[str], list[str]]:
        if isinstance(self.question, str):
            return [self.question], [self.context]
        return list(self.question), list(self.context)


class Parameters(BaseModel):
    """The question-answering pipeline's parameters; omitted ones take the pipeline's defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: int = Field(1, ge=1, description="How many answers per question (best first).")
    max_answer_len: int = Field(15, ge=1, le=512, description="Longest answer, in tokens.")
    max_seq_len: Optional[int] = Field(
        None, ge=16, description="Window length in tokens (question + context); default min(model_max_length, 384)."
    )
    doc_stride: Optional[int] = Field(
        None,
        ge=0,
        description="Overlap between consecutive windows of a long "
        "context, in tokens; default min(max_seq_len // 2, 128).",
    )
    max_question_len: int = Field(64, ge=1, le=512, description="Longest question in tokens (slow tokenizers only).")
    handle_impossible_answer: bool = Field(False, description="Allow the empty answer (SQuAD v2).")
    align_to_words: bool = Field(True, description="Snap answer boundaries to whole words.")

    @model_validator(mode="after")
    def _bounded(self, info: ValidationInfo) -> "Parameters":
        limits = (info.context or {}).get("limits", Limits())
        if self.top_k > limits.max_top_k:
            raise PydanticCustomError(
                "top_k_too_large",
                "top_k is {k}, over the server's limit of {limit}",
                {"k": self.top_k, "limit": limits.max_top_k},
            )
        if self.max_seq_len is not None and self.max_seq_len > limits.max_seq_len:
            raise PydanticCustomError(
                "max_seq_len_too_large",
                "max_seq_len is {n}, over the model's limit of {limit}",
                {"n": self.max_seq_len, "limit": limits.max_seq_len},
            )
        seq = self.max_seq_len if self.max_seq_len is not None else min(limits.max_seq_len, 384)
        if self.doc_stride is not None and self.doc_stride >= seq:
            raise PydanticCustomError(
                "doc_stride_too_large",
                "doc_stride ({s}) must be smaller than max_seq_len ({n})",
                {"s": self.doc_stride, "n": seq},
            )
        return self

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The parameters actually given (defaults left to the pipeline), in a fixed order."""
        return {k: v for k, v in sorted(self.model_dump(exclude_unset=True).items())}


class ScoreRequest(BaseModel):
    """The body of POST /score and POST /v1/answer."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"}},
                {
                    "input_data": {
                        "question": ["What's my name?", "Where do I live?"],
                        "context": ["My name is John and I live in Seattle", "I live in Rome"],
                    },
                    "parameters": {"top_k": 1, "max_answer_len": 15},
                },
            ]
        },
    )

    input_data: InputData
    parameters: Parameters = Field(default_factory=Parameters)

    @field_validator("input_data", "parameters", mode="before")
    @classmethod
    def _objects(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            what = '{"question": ..., "context": ...}' if info.field_name == "input_data" else '{"top_k": 1, ...}'
            raise PydanticCustomError(
                "object_type", "must be an object such as {what}, got {got}", {"what": what, "got": a_json_type(value)}
            )
        return value


class Attribution(BaseModel):
    """How POST /v1/attributions explains the answer (npbert/attributions.py; docs/attributions.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    method: Literal[METHODS] = Field("ig", description="ig, grad-x-input, smoothgrad or rollout.")
    n_steps: int = Field(DEFAULT_N_STEPS, ge=1, description="ig: integration steps (Captum's n_steps).")
    approximation: Literal[APPROXIMATIONS] = Field("gausslegendre", description="ig: Captum's approximation method.")
    samples: int = Field(DEFAULT_SAMPLES, ge=1, description="smoothgrad: noisy copies averaged.")
    noise: float = Field(
        DEFAULT_NOISE, ge=0, description="smoothgrad: noise standard deviation, a fraction of the embeddings' range."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="smoothgrad: the noise's seed.")
    span: Optional[list[int]] = Field(
        None,
        min_length=2,
        max_length=2,
        description="[start, end] characters of the context to explain; default: the pipeline's best answer.",
    )

    @field_validator("noise", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _bounded(self, info: ValidationInfo) -> "Attribution":
        limits = (info.context or {}).get("limits", Limits())
        for name, limit in (("n_steps", limits.max_n_steps), ("samples", limits.max_samples)):
            if getattr(self, name) > limit:
                raise PydanticCustomError(
                    "over_limit",
                    "{name} is {n}, over the server's limit of {limit}",
                    {"name": name, "n": getattr(self, name), "limit": limit},
                )
        return self


class AttributionRequest(BaseModel):
    """The body of POST /v1/attributions: one question and one context, the pipeline's parameters, and how
    to attribute."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"},
                    "attribution": {"method": "ig", "n_steps": 50},
                }
            ]
        },
    )

    input_data: InputData
    parameters: Parameters = Field(default_factory=Parameters)
    attribution: Attribution = Field(default_factory=Attribution)

    @field_validator("input_data", "parameters", "attribution", mode="before")
    @classmethod
    def _objects(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            raise PydanticCustomError("object_type", "must be an object, got {got}", {"got": a_json_type(value)})
        return value


# --- the responses (for the OpenAPI document; the routes build plain JSON) -----------------------------


class AnswerRecord(BaseModel):
    """One answer as the pipeline returns it: the text and its character span in the context."""

    answer: str = Field(description="context[start:end]; empty for 'no answer' (handle_impossible_answer).")
    score: float = Field(description="p_start x p_end within the answer's window.")
    start: int
    end: int


class ErrorResponse(BaseModel):
    status: int = Field(description="The HTTP status, repeated.")
    error: str = Field(description="One line naming the problem.")
    problems: list[str] = Field(description="Every problem found (the first is `error`).")


# The JSON shapes of the two answering routes, one entry per question, in order: a record (or answer text)
# when top_k is 1, a list of them when top_k > 1, as the pipeline returns per question.
ScoreResponse = list[Union[str, list[str]]]
AnswerResponse = list[Union[AnswerRecord, list[AnswerRecord]]]


# --- parsing a raw body ----------------------------------------------------------------------------------


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "request body"


def describe(error: ValidationError) -> list[str]:
    """pydantic's errors as one line each: 'input_data.question: must not be empty or blank'."""
    return [f"{_where(e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)]


_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON `text`, brackets inside strings not counted. For any
    text, valid JSON or not; it runs before the decoder, in C-speed passes over the text."""
    unescaped = text.replace("\\\\", "").replace('\\"', "")  # escapes occur in strings only; \" ends none
    outside = "".join(unescaped.split('"')[::2])  # the text between strings
    brackets = np.frombuffer(_NOT_BRACKET.sub("", outside).encode("ascii"), dtype=np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return max(0, int(np.cumsum(steps).max()))


def _parse_int(digits: str) -> int:
    n = len(digits.lstrip("-"))
    if n > MAX_INTEGER_DIGITS:
        raise BadRequest(
            400, f"request body holds an integer of {n} digits, over the server's limit of {MAX_INTEGER_DIGITS}"
        )
    return int(digits)


def _no_constant(name: str):
    raise BadRequest(400, f"request body is not valid JSON: {name} is not a JSON number")


def parse_request(body: bytes, limits: Limits, schema=ScoreRequest):
    """The request in `body` (a `schema`: ScoreRequest, or AttributionRequest), or a BadRequest naming the
    first problem (400 not JSON, 422 wrong schema)."""
    if not body.strip():
        raise BadRequest(
            400, 'request body is empty: send a JSON object such as {"input_data": {"question": ..., "context": ...}}'
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(
            400, f"request body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})"
        ) from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(
            400,
            f"request body nests arrays and objects {depth} levels deep, over the server's limit of {MAX_JSON_DEPTH}",
        )
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise BadRequest(400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # not reached below MAX_JSON_DEPTH; kept so that no body can make a 500
        raise BadRequest(400, "request body nests arrays and objects too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest(422, f'request body must be a JSON object with an "input_data" key, got {json_type(obj)}')
    try:
        return schema.model_validate(obj, context={"limits": limits})
    except ValidationError as e:
        problems = describe(e)
        raise BadRequest(422, problems[0], problems) from None
