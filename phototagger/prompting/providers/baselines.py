"""Offline baseline taggers that need no key and no network: `prior` and `knn` (JEC).

Both learn only from `history` (photos of earlier batches, with ground truth) and never from
the photo they are asked about: a photo that is also in the history is left out by its id.
They answer `{"tags": [...]}` text, so the prompter scores them like any model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from phototagger.prompting.cache import make_cache
from phototagger.prompting.providers.features import (
    LOAD_SIDE,
    FeatureCache,
    Features,
    image_features,
    jec_distances,
    stack_features,
)
from phototagger.http import DEFAULT_TIMEOUT_S, MAX_IMAGE_BYTES, ImageFetchError
from phototagger.images import load_image
from phototagger.records import Photo
from phototagger.scoring.tags import normalise_tags
from phototagger.prompting.providers.base import Answer, Provider, ProviderError, register_provider

log = logging.getLogger(__name__)

HISTORY_LOADERS = 8  # parallel image reads when knn first computes the history's features


class _HistoryBaseline(Provider):
    """Shared by the baselines: the tagged history, tag statistics counted once, and self-exclusion.

    `history` is the earlier photos they may look at (for knn, a bounded sample: ingest/state.py);
    `tag_stats` (UpdatePhotos' running counts over every earlier photo) replaces counting them.
    """

    learns_from_history = True
    reads_prompt = False

    def __init__(self, model: str, *, history: Iterable[Photo] = (), tag_stats: Optional[Mapping[str, Any]] = None,
                 n_tags: Optional[int] = None):
        super().__init__(model)
        self.history: list[Photo] = []
        self.tags_by_id: dict[str, list[str]] = {}
        for photo in history:
            tags = normalise_tags(photo.get("ground_truth_tags") or [])
            if tags and photo["id"] not in self.tags_by_id:
                self.history.append(photo)
                self.tags_by_id[photo["id"]] = tags
        self.n_tags = n_tags
        self.photos_with_tag: dict[str, set[str]] = defaultdict(set)
        for photo_id, tags in self.tags_by_id.items():
            for tag in tags:
                self.photos_with_tag[tag].add(photo_id)
        if tag_stats:
            self.tag_counts = Counter(tag_stats["tags"])
            self.sizes, self.tagged = Counter({int(n): c for n, c in tag_stats["sizes"].items()}), int(tag_stats["photos"])
        else:
            self.tag_counts, self.sizes, self.tagged = count_tags(self.tags_by_id.values())
        self.ranked = sorted(self.tag_counts, key=lambda tag: (-self.tag_counts[tag], tag))

    def _check_history(self, photo_id: Optional[str]) -> None:
        """No earlier tagged photo but the asked one -> no_history."""
        if self.tagged - (photo_id in self.tags_by_id) <= 0:
            raise ProviderError(
                "no_history",
                f"{self.name} has no earlier tagged photos to learn from: run UpdatePhotos again for a second batch",
                retryable=False,
            )

    def _how_many(self, photo_id: Optional[str]) -> int:
        """How many tags to predict: the option, else the median tag count of the history (the asked photo left out)."""
        if self.n_tags:
            return self.n_tags
        sizes = self.sizes.copy()
        if photo_id in self.tags_by_id:
            sizes[len(self.tags_by_id[photo_id])] -= 1
        return max(1, int(_median(sizes) + 0.5))

    def _frequency(self, tag: str, photo_id: Optional[str]) -> int:
        """Earlier photos with `tag`, the asked photo left out; a sort key, so no set copy."""
        return self.tag_counts.get(tag, 0) - (photo_id in self.photos_with_tag.get(tag, ()))

    def settings(self) -> dict[str, Any]:
        digest = hashlib.sha256(
            json.dumps([sorted(self.tag_counts.items()), sorted(self.tags_by_id.items())], ensure_ascii=True).encode()
        ).hexdigest()[:12]
        return {**super().settings(), "n_tags": self.n_tags, "history_size": self.tagged, "history_digest": digest}

    @staticmethod
    def _answer(tags: list[str]) -> Answer:
        return Answer(json.dumps({"tags": tags}), None, None)


def count_tags(tag_lists: Iterable[Sequence[str]]) -> tuple[Counter, Counter, int]:
    """Photos per tag, photos per number of tags, and photos: the history's tag statistics, counted once per run."""
    counts, sizes, photos = Counter(), Counter(), 0
    for tags in tag_lists:
        counts.update(tags)
        sizes[len(tags)] += 1
        photos += 1
    return counts, sizes, photos


def _median(histogram: Counter) -> float:
    """The median of the values a histogram (value -> how many) counts, without expanding it."""
    total = sum(max(0, count) for count in histogram.values())
    if not total:
        return 1

    def nth(k: int) -> int:
        seen = 0
        for value in sorted(histogram):
            seen += max(0, histogram[value])
            if seen > k:
                return value
        raise AssertionError("unreachable: k < total")

    return (nth((total - 1) // 2) + nth(total // 2)) / 2


@register_provider("prior")
class TagPriorProvider(_HistoryBaseline):
    """Predicts the history's most frequent tags for every photo: the floor any model must beat."""

    def __init__(self, model: str = "tag-prior", **options: Any):
        super().__init__(model, **options)

    def complete(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> Answer:
        self._check_history(photo_id)
        ranked = self.ranked
        if photo_id in self.tags_by_id:  # the asked photo is in the history: rank without its own tags
            counts = self.tag_counts - Counter(self.tags_by_id[photo_id])
            ranked = sorted(counts, key=lambda tag: (-counts[tag], tag))
        return self._answer(ranked[: self._how_many(photo_id)])


@register_provider("knn")
class JECProvider(_HistoryBaseline):
    """Transfers tags from the visually nearest history photos (Makadia et al. 2008, JEC).

    The nearest neighbour's tags come first, most frequent in the history first. When it has
    fewer tags than wanted, tags of the next `neighbours - 1` photos follow, ranked by their
    co-occurrence in the history with the tags already taken times their local frequency among
    those neighbours; ties go to local, then history frequency.
    """

    def __init__(
        self,
        model: str = "jec",
        *,
        neighbours: int = 5,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        feature_cache: bool = True,
        **options: Any,
    ):
        super().__init__(model, **options)
        self.neighbours = neighbours
        self.timeout_s = timeout_s
        self.max_image_bytes = max_image_bytes
        self._feature_cache = FeatureCache(make_cache()) if feature_cache else None
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._matrix: Optional[dict[str, np.ndarray]] = None

    def complete(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> Answer:
        self._check_history(photo_id)
        ids, matrix = self._load_history()
        candidates = [i for i, pid in enumerate(ids) if pid != photo_id]
        if not candidates:
            raise ProviderError("no_history", f"knn could read none of the {len(self.history)} history images", retryable=False)
        try:
            query = self._features_of(image)
        except ImageFetchError as exc:
            raise ProviderError(exc.error_class, str(exc)) from None
        distances = jec_distances(query, {name: rows[candidates] for name, rows in matrix.items()})
        nearest = [ids[candidates[i]] for i in np.argsort(distances, kind="stable")[: self.neighbours]]
        return self._answer(self._transfer(nearest, self._how_many(photo_id), photo_id))

    def _load_history(self) -> tuple[list[str], dict[str, np.ndarray]]:
        """Features of the history, each read from the feature cache or computed once, stacked into one
        array per descriptor once per provider (per run); unreadable images are skipped."""
        with self._lock:
            if self._matrix is None:
                with ThreadPoolExecutor(HISTORY_LOADERS) as pool:  # mostly waiting on downloads
                    loaded = list(pool.map(self._history_features, self.history))
                kept = [(photo["id"], features) for photo, features in zip(self.history, loaded) if features is not None]
                self._ids = [photo_id for photo_id, _ in kept]
                self._matrix = stack_features([features for _, features in kept])
            return self._ids, self._matrix

    def _history_features(self, photo: Photo) -> Optional[Features]:
        try:
            return self._features_of(photo["image_url"])
        except ImageFetchError as exc:
            log.warning("knn skips history photo %s: %s", photo["id"], exc)
            return None

    def _features_of(self, location: str) -> Features:
        """An image's features from the cache (keyed by the image), else computed and cached for later runs."""
        key = self._feature_cache.key(location) if self._feature_cache is not None else None
        cached = self._feature_cache.get(key) if key is not None else None
        if cached is not None:
            return cached
        image = load_image(location, LOAD_SIDE, draft=True, max_bytes=self.max_image_bytes, timeout_s=self.timeout_s)
        features = image_features(image)
        if key is not None:
            self._feature_cache.put(key, features)
        return features

    def _transfer(self, nearest: list[str], n_tags: int, photo_id: Optional[str]) -> list[str]:
        """JEC label transfer from neighbours sorted nearest first."""
        first = sorted(self.tags_by_id[nearest[0]], key=lambda t: (-self._frequency(t, photo_id), t))
        if len(first) >= n_tags:
            return first[:n_tags]
        local = Counter(t for pid in nearest[1:] for t in self.tags_by_id[pid] if t not in first)

        def cooccurrence(tag: str) -> int:
            with_tag = self.photos_with_tag[tag] - {photo_id}
            return sum(len(with_tag & self.photos_with_tag[t]) for t in first)

        ranked = sorted(
            local, key=lambda t: (-local[t] * cooccurrence(t), -local[t], -self._frequency(t, photo_id), t)
        )
        return first + ranked[: n_tags - len(first)]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "neighbours": self.neighbours, "features": "jec-rgb-hsv-lab-gabor-haar"}
