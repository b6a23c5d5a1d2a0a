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
from statistics import median
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from phototagger.prompting.providers.features import LOAD_SIDE, Features, image_features, jec_distances
from phototagger.http import DEFAULT_TIMEOUT_S, MAX_IMAGE_BYTES, ImageFetchError
from phototagger.images import load_image
from phototagger.records import Photo
from phototagger.scoring.tags import normalise_tags
from phototagger.prompting.providers.base import Answer, Provider, ProviderError, register_provider

log = logging.getLogger(__name__)

HISTORY_LOADERS = 8  # parallel image reads when knn first computes the history's features


class _HistoryBaseline(Provider):
    """Shared by the baselines: the tagged history, tag statistics, and self-exclusion."""

    learns_from_history = True

    def __init__(self, model: str, *, history: Iterable[Photo] = (), n_tags: Optional[int] = None):
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

    def _others(self, photo_id: Optional[str]) -> list[str]:
        """History ids usable for this photo; none left -> no_history."""
        others = [pid for pid in self.tags_by_id if pid != photo_id]
        if not others:
            raise ProviderError(
                "no_history",
                f"{self.name} has no earlier tagged photos to learn from: run UpdatePhotos again for a second batch",
                retryable=False,
            )
        return others

    def _how_many(self, others: Sequence[str]) -> int:
        """How many tags to predict: the option, else the median tag count of the history."""
        if self.n_tags:
            return self.n_tags
        return max(1, int(median(len(self.tags_by_id[pid]) for pid in others) + 0.5))

    def _frequency(self, tag: str, photo_id: Optional[str]) -> int:
        """History photos with `tag`, the asked photo left out; a sort key, so no set copy."""
        with_tag = self.photos_with_tag.get(tag, ())
        return len(with_tag) - (photo_id in with_tag)

    def settings(self) -> dict[str, Any]:
        digest = hashlib.sha256(
            json.dumps(sorted(self.tags_by_id.items()), ensure_ascii=True).encode()
        ).hexdigest()[:12]
        return {**super().settings(), "n_tags": self.n_tags, "history_size": len(self.history), "history_digest": digest}

    @staticmethod
    def _answer(tags: list[str]) -> Answer:
        return Answer(json.dumps({"tags": tags}), None, None)


@register_provider("prior")
class TagPriorProvider(_HistoryBaseline):
    """Predicts the history's most frequent tags for every photo: the floor any model must beat."""

    def __init__(self, model: str = "tag-prior", **options: Any):
        super().__init__(model, **options)

    def complete(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> Answer:
        others = self._others(photo_id)
        counts = Counter(tag for pid in others for tag in self.tags_by_id[pid])
        ranked = sorted(counts, key=lambda tag: (-counts[tag], tag))
        return self._answer(ranked[: self._how_many(others)])


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
        **options: Any,
    ):
        super().__init__(model, **options)
        self.neighbours = neighbours
        self.timeout_s = timeout_s
        self.max_image_bytes = max_image_bytes
        self._features: dict[str, Features] = {}
        self._lock = threading.Lock()
        self._history_loaded = False

    def complete(self, prompt_text: str, image: str, photo_id: Optional[str] = None) -> Answer:
        others = self._others(photo_id)
        self._load_history()
        candidates = [pid for pid in others if pid in self._features]
        if not candidates:
            raise ProviderError(
                "no_history", f"knn could read none of the {len(others)} history images", retryable=False
            )
        try:
            query = self._features.get(photo_id) if photo_id else None
            if query is None:
                query = self._features_of(image)
                if photo_id:
                    self._features[photo_id] = query
        except ImageFetchError as exc:
            raise ProviderError(exc.error_class, str(exc)) from None
        distances = jec_distances(query, [self._features[pid] for pid in candidates])
        nearest = [candidates[i] for i in np.argsort(distances, kind="stable")[: self.neighbours]]
        return self._answer(self._transfer(nearest, self._how_many(others), photo_id))

    def _load_history(self) -> None:
        """Compute history features once (per provider), skipping images that cannot be read."""
        with self._lock:
            if self._history_loaded:
                return
            with ThreadPoolExecutor(HISTORY_LOADERS) as pool:  # mostly waiting on downloads
                for photo, features in zip(self.history, pool.map(self._history_features, self.history)):
                    if features is not None:
                        self._features[photo["id"]] = features
            self._history_loaded = True

    def _history_features(self, photo: Photo) -> Optional[Features]:
        try:
            return self._features_of(photo["image_url"])
        except ImageFetchError as exc:
            log.warning("knn skips history photo %s: %s", photo["id"], exc)
            return None

    def _features_of(self, location: str) -> Features:
        image = load_image(location, LOAD_SIDE, draft=True, max_bytes=self.max_image_bytes, timeout_s=self.timeout_s)
        return image_features(image)

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
