"""The HTTP service's request and response models (pydantic), built per app: their limits are app arguments.

pydantic comes with the optional ``serve`` extra, so it is imported inside :func:`api_models`, never at import time.
Requests are strict (``"10"`` is not an int, ``3`` is not a string) and forbid unknown fields (a misspelt field is
an error, not silently ignored).
"""

# No ``from __future__ import annotations``: pydantic resolves the field annotations of classes built inside a
# function against that function's locals, so they must stay eager.

from dataclasses import dataclass
from typing import Annotated, Any

MAX_FILTERS = 50  # conditions in one request's filters object


@dataclass(frozen=True)
class ApiModels:
    """The pydantic classes of one app; ``errors`` is the OpenAPI ``responses`` entry for 400 / 422 answers."""

    search: Any  # SearchRequest
    recommend: Any  # RecommendRequest
    explain: Any  # ExplainRequest
    hits: Any  # HitsResponse
    explained: Any  # ExplainResponse
    health: Any  # HealthResponse
    error: Any  # ErrorResponse
    errors: dict[int | str, dict[str, Any]]
    searched: Any = None  # SearchResponse: HitsResponse plus "warnings"


def api_models(max_query_chars: int, max_history: int, max_k: int) -> ApiModels:
    """Request models whose fields are bounded by the limits given, and the response models."""
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field

    def not_blank(text: str) -> str:
        if not text.strip():
            raise ValueError("must not be blank")
        return text

    Text = Annotated[str, Field(min_length=1, max_length=max_query_chars), AfterValidator(not_blank)]
    K = Annotated[int, Field(ge=1, le=max_k, description="how many hits to return")]
    History = Annotated[
        list[Text], Field(min_length=1, max_length=max_history, description="texts the user engaged with, oldest first")
    ]

    class Strict(BaseModel):
        # strict: "10" is not an int, 3 is not a string; forbid: a misspelt field is an error, not ignored.
        model_config = ConfigDict(strict=True, extra="forbid")

    Filters = Annotated[
        dict[str, Any] | None,
        Field(
            max_length=MAX_FILTERS,
            description='catalog column -> value (equal), [values] (any of) or {"min": lo, "max": hi} (inclusive)',
            examples=[{"color": ["red", "blue"], "duration_s": {"max": 60}}],
        ),
    ]

    class SearchRequest(Strict):
        query: Text = Field(examples=["a red circle moving left"])
        k: K = 10
        filters: Filters = None
        min_score: float | None = Field(
            None, allow_inf_nan=False, description="drop hits scoring below this; compare the bundle's noise_score"
        )

    class RecommendRequest(Strict):
        history: History = Field(examples=[["a green ball moving up", "green dots rising"]])
        k: K = 10
        exclude: list[Annotated[str, Field(max_length=max_query_chars)]] = Field(
            default_factory=list, max_length=max_history, description="video ids never to return"
        )
        filters: Filters = None
        exclude_seen: bool = Field(
            True, description="skip videos the history names (an item equal to a video id or title)"
        )

    class ExplainRequest(Strict):
        history: History = Field(examples=[["a green ball moving up", "green dots rising"]])

    r = _response_models()
    errors = {c: {"model": r[-1]} for c in (400, 422)}
    return ApiModels(SearchRequest, RecommendRequest, ExplainRequest, *r, errors, searched=_search_response(r[0]))


def _search_response(hits: Any) -> Any:
    """The /search answer: the hits, and warnings about the query (e.g. no word the English-only model knows)."""
    from pydantic import Field

    class SearchResponse(hits):
        warnings: list[str] = Field(default_factory=list, description="why the hits may be noise; empty if none")

    return SearchResponse


def _response_models() -> tuple[Any, Any, Any, Any]:
    """(HitsResponse, ExplainResponse, HealthResponse, ErrorResponse)."""
    from pydantic import BaseModel, ConfigDict

    class HitOut(BaseModel):
        model_config = ConfigDict(extra="allow")  # plus the catalog's metadata columns
        video_id: str
        score: float
        rank: int

    class HitsResponse(BaseModel):
        hits: list[HitOut]

    class AttentionOut(BaseModel):
        text: str
        weight: float

    class ExplainResponse(BaseModel):
        attention: list[AttentionOut]

    class HealthResponse(BaseModel):
        status: str
        videos: int

    class ErrorResponse(BaseModel):
        error: str

    return HitsResponse, ExplainResponse, HealthResponse, ErrorResponse
