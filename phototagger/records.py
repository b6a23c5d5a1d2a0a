"""The records that flows pass to each other as artifacts (DESIGN.md, "Records").

They are TypedDicts, so artifacts stay plain dicts that any Metaflow client can read
without importing this package.
"""
from __future__ import annotations

from typing import Optional, TypedDict


class Photo(TypedDict, total=False):
    """One ingested photo with its ground truth."""

    id: str
    image_url: str  # http(s) URL or an absolute local path
    ground_truth_tags: list[str]  # normalised, deduplicated
    source: str  # "unsplash", "folder", "unsplash-lite", "demo"
    created_at: str  # ISO 8601
    description: Optional[str]
    width: Optional[int]
    height: Optional[int]
    photographer: Optional[str]
    tag_provenance: dict[str, str]  # tag -> where it came from (e.g. "user", "ai:87.2")
    attribution: Optional[str]
    tag_origin: dict[str, str]  # tag -> the field of the photo's own metadata it was read from ("iptc:keywords")
    name: str  # what the user calls the photo: its path inside the folder ("trip/rocket.jpg"); absent: the id
    confirmed_tags: list[str]  # model suggestions the photographer confirmed (part of ground_truth_tags)
    rejected_tags: list[str]  # model suggestions the photographer deleted: never suggested again
    suggested_tags: list[str]  # model suggestions not reviewed yet: never ground truth
    corrects: str  # a photo delivered again after a review (id "<its id>@review-<key>"): the id it had


def photo_name(photo: Photo) -> str:
    """The name a user knows a photo by: its path inside the folder, else its id."""
    return photo.get("name") or str(photo.get("id", ""))


class ModelResult(TypedDict, total=False):
    """What one model said about one photo; a failure is a result too, never a gap."""

    photo_id: str
    provider: str
    model: str
    tags: list[str]  # parsed and normalised
    raw: str  # the model's text, or the error message (secrets scrubbed)
    valid: bool  # the answer parsed as the requested {"tags": [...]} JSON
    error: Optional[str]  # None or an ERROR_CLASSES member
    latency_ms: float
    recall: Optional[float]  # None when the photo has no ground truth
    precision: Optional[float]
    f1: Optional[float]
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    cost_usd: Optional[float]
    cached: bool
    recall_lenient: Optional[float]  # the lenient matching rule (scoring/metrics.py); the three above are "exact"
    precision_lenient: Optional[float]
    f1_lenient: Optional[float]
    prompt_variant: str  # the prompt's variants.PromptVariant id, e.g. "default@3f2a1c"


ERROR_CLASSES = (
    "rate_limited",  # 429 after all retries
    "timeout",  # the call or the image fetch took too long
    "deadline",  # not prompted: the model's deadline for the run had passed
    "server_error",  # 5xx after all retries
    "connection",  # reset, refused, DNS
    "auth",  # 401/403: missing or rejected key
    "bad_request",  # other 4xx
    "bad_image",  # image missing, not an image, too large
    "unparseable",  # the answer held no tag list at all
    "truncated",  # the answer was cut off (max_tokens reached, JSON left open)
    "refused",  # the model declined to answer (a refusal field or a prose refusal)
    "quota",  # the account's quota or credit is used up (the server's message is kept)
    "no_history",  # an offline baseline had nothing to learn from
    "internal",  # a bug on our side, recorded instead of crashing the run
)
