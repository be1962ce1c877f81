"""The HTTP service's request and response models (pydantic), built per app: their limits are app arguments.

pydantic comes with the optional ``serve`` extra, so it is imported inside :func:`api_models`, never at import time.
Requests are strict (``"10"`` is not an int, ``3`` is not a string) and forbid unknown fields (a misspelt field is
an error, not silently ignored).
"""

# No ``from __future__ import annotations``: pydantic resolves the field annotations of classes built inside a
# function against that function's locals, so they must stay eager.

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from multimodal_rec.serving.filters import MAX_VALUES
from multimodal_rec.serving.validation import MAX_EXCLUDE

MAX_FILTERS = 50  # conditions in one request's filters object


@dataclass(frozen=True)
class ApiModels:
    """The pydantic classes of one app; ``errors`` is the OpenAPI ``responses`` entry for 400 / 415 / 422 answers."""

    search: Any  # SearchRequest
    recommend: Any  # RecommendRequest
    explain: Any  # ExplainRequest
    hits: Any  # HitsResponse
    recommended: Any  # RecommendResponse
    explained: Any  # ExplainResponse
    health: Any  # HealthResponse
    error: Any  # ErrorResponse
    errors: dict[int | str, dict[str, Any]]
    searched: Any = None  # SearchResponse: HitsResponse plus "warnings"


def api_models(max_query_chars: int, max_history: int, max_k: int) -> ApiModels:
    """Request models whose fields are bounded by the limits given, and the response models."""
    from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

    def not_blank(text: str) -> str:
        if not text.strip():
            raise ValueError("must not be blank")
        return text

    Text = Annotated[str, Field(min_length=1, max_length=max_query_chars), AfterValidator(not_blank)]
    # JSON has one number type: 37.0 is the integer 37 to a JSON Schema validator, so the handler takes it too
    # (Field before the validator: after it, pydantic writes "ge"/"le" into the schema instead of minimum/maximum)
    K = Annotated[int, Field(ge=1, le=max_k, description="how many hits to return"), BeforeValidator(_whole_number)]
    History = Annotated[
        list[Text],
        Field(
            min_length=1,
            max_length=max_history,
            description="texts or video ids the user engaged with, oldest first (a served video id is read as the "
            "video's title, else its caption or description)",
        ),
    ]
    HistoryIds = Annotated[
        bool,
        Field(description="every history item is a video id: unknown ones are reported in unknown_ids, not used"),
    ]

    class Strict(BaseModel):
        # strict: "10" is not an int, 3 is not a string; forbid: a misspelt field is an error, not ignored.
        model_config = ConfigDict(strict=True, extra="forbid")

    # Checked by serving.filters (one-line 400s naming the column), documented here as exactly what it accepts.
    Filters = Annotated[dict[str, Any] | None, Field(max_length=MAX_FILTERS), WithJsonSchema(_filters_schema())]

    SearchMode = Annotated[
        Literal["vector", "lexical", "hybrid"] | None,
        Field(
            description="vector (text tower), lexical (BM25 over the catalog's text) or hybrid (both, fused by "
            "reciprocal rank; each hit's scores holds both parts); null: hybrid when the catalog has text, else vector"
        ),
    ]

    class SearchRequest(Strict):
        query: Text = Field(examples=["a red circle moving left"])
        k: K = 10
        filters: Filters = None
        min_score: float | None = Field(
            None, allow_inf_nan=False, description="drop hits scoring below this; compare the bundle's noise_score"
        )
        mode: SearchMode = None
        moments: bool = Field(
            False, description="segment-level hits: the best-matching moments, a video once per matching segment"
        )

    class RecommendRequest(Strict):
        history: History = Field(examples=[["a green ball moving up", "green dots rising"]])
        k: K = 10
        exclude: list[Annotated[str, Field(max_length=max_query_chars)]] = Field(
            default_factory=list, max_length=MAX_EXCLUDE, description="video ids never to return"
        )
        filters: Filters = None
        exclude_seen: bool = Field(
            True, description="skip videos the history names (an item equal to a video id or title)"
        )
        history_ids: HistoryIds = False

    class ExplainRequest(Strict):
        history: History = Field(examples=[["a green ball moving up", "green dots rising"]])
        history_ids: HistoryIds = False

    r = _response_models()
    errors = {c: {"model": r[-1]} for c in (400, 415, 422)}
    return ApiModels(SearchRequest, RecommendRequest, ExplainRequest, *r, errors, searched=_search_response(r[0]))


def _search_response(hits: Any) -> Any:
    """The /search answer: the hits, each with its moment, and warnings about the query (e.g. no word the
    English-only model knows)."""
    from pydantic import BaseModel, ConfigDict, Field

    class MomentOut(BaseModel):
        start_s: float = Field(description="where the matching moment starts, in seconds")
        end_s: float | None = Field(description="where it ends, in seconds (null: the video's duration is unknown)")
        score: float | None = Field(description="the best segment's score in it (cosine; null: a lexical match)")

    class SearchHitOut(BaseModel):
        model_config = ConfigDict(extra="allow")  # plus the catalog's metadata columns
        video_id: str
        score: float
        rank: int
        moment: MomentOut = Field(description="the part of the video that matches the query best")

    class SearchResponse(hits):
        hits: list[SearchHitOut]
        warnings: list[str] = Field(default_factory=list, description="why the hits may be noise; empty if none")

    return SearchResponse


def _whole_number(v: Any) -> Any:
    """A float with no fractional part (JSON ``37.0``) as the int it is; anything else unchanged (then refused)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _filters_schema() -> dict[str, Any]:
    """The JSON Schema of ``filters``: what :func:`serving.filters.filter_mask` accepts, condition by condition."""
    value: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
    null = {"type": "null"}
    bound = {"anyOf": [value, null]}
    condition = {
        "anyOf": [
            value,
            {"type": "array", "items": value, "minItems": 1, "maxItems": MAX_VALUES},  # any of them
            {"type": "array", "prefixItems": [null, value], "minItems": 2, "maxItems": 2},  # [null, hi]
            {"type": "array", "prefixItems": [value, null], "minItems": 2, "maxItems": 2},  # [lo, null]
            *(
                {
                    "type": "object",
                    "properties": {"min": bound, "max": bound, key: value},
                    "required": [key],
                    "additionalProperties": False,
                }
                for key in ("min", "max")
            ),
        ]
    }
    return {
        "anyOf": [{"type": "object", "additionalProperties": condition, "maxProperties": MAX_FILTERS}, null],
        "description": "catalog column -> value (equal), [values] (any of), [lo, hi] with a null end or "
        '{"min": lo, "max": hi} (inclusive range, null = open end; numeric and date columns)',
        "examples": [{"color": ["red", "blue"], "duration_s": {"max": 60}}],
    }


def _response_models() -> tuple[Any, Any, Any, Any, Any]:
    """(HitsResponse, RecommendResponse, ExplainResponse, HealthResponse, ErrorResponse)."""
    from pydantic import BaseModel, ConfigDict, Field

    class HitOut(BaseModel):
        model_config = ConfigDict(extra="allow")  # plus the catalog's metadata columns
        video_id: str
        score: float
        rank: int

    class HitsResponse(BaseModel):
        hits: list[HitOut]

    class Resolution(BaseModel):
        resolved: dict[str, str] = Field(description="history items read as video ids -> the text the model read")
        unknown_ids: list[str] = Field(description="history items left out: unknown video ids, or videos without text")

    class RecommendResponse(HitsResponse, Resolution):
        pass

    class AttentionOut(BaseModel):
        text: str = Field(description="the text the model read: the item itself, or for a video id the video's text")
        weight: float

    class ExplainResponse(Resolution):
        attention: list[AttentionOut]

    class HealthResponse(BaseModel):
        status: str
        videos: int
        synonyms: dict[str, Any] | None = None  # the synonyms file in use: path, sha256, rules, terms

    class ErrorResponse(BaseModel):
        error: str

    return HitsResponse, RecommendResponse, ExplainResponse, HealthResponse, ErrorResponse
