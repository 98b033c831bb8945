"""A bounded folder of finished reply videos: published whole, found by id, oldest evicted first."""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
_SUFFIX = ".mp4"


@dataclass(frozen=True)
class StoredVideo:
    """One published video."""

    video_id: str
    path: Path
    size_bytes: int
    created: float


@dataclass(frozen=True)
class StoreLimits:
    """How much the store keeps; 0 means no limit for that measure."""

    max_bytes: int
    max_age_s: float
    max_count: int


class VideoStore:
    """Keeps finished MP4s in `root` within `limits`.

    Files are written under `root/.partial` and renamed into place only when complete, so
    a reader never sees half a file. Ids are random hex made here, and lookups accept only
    that shape, so a request cannot name any other path. The newest video is always kept,
    even when it alone exceeds `max_bytes`, so a just-returned URL is never dead on arrival.
    """

    def __init__(self, root: Path, limits: StoreLimits, clock=time.time) -> None:
        self.root = root
        self.limits = limits
        self._clock = clock
        self._partial = root / ".partial"
        self._lock = threading.Lock()
        self._videos: dict[str, StoredVideo] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._partial.mkdir(exist_ok=True)
        self._recover()

    def _recover(self) -> None:
        """Drops leftovers of interrupted writes and re-indexes videos kept from an earlier run."""
        for leftover in self._partial.iterdir():
            leftover.unlink(missing_ok=True)
        found = []
        for path in self.root.glob(f"*{_SUFFIX}"):
            video_id = path.name.removesuffix(_SUFFIX)
            if _ID_PATTERN.fullmatch(video_id):
                stat = path.stat()
                found.append(StoredVideo(video_id, path, stat.st_size, stat.st_mtime))
        for video in sorted(found, key=lambda v: v.created):
            self._videos[video.video_id] = video
        with self._lock:
            self._evict_locked()

    def partial_path(self) -> Path:
        """A fresh path inside the store's filesystem to write a video into before `publish`."""
        handle, name = tempfile.mkstemp(suffix=_SUFFIX, dir=self._partial)
        os.close(handle)
        return Path(name)

    def publish(self, partial: Path) -> StoredVideo:
        """Moves a complete file from `partial_path()` into the store under a new id; evicts."""
        video_id = secrets.token_hex(16)
        final = self.root / f"{video_id}{_SUFFIX}"
        os.replace(partial, final)
        now = self._clock()
        os.utime(final, (now, now))
        video = StoredVideo(video_id, final, final.stat().st_size, now)
        with self._lock:
            self._videos[video_id] = video
            self._evict_locked()
        return video

    def discard(self, partial: Path) -> None:
        """Removes a partial file that will not be published."""
        partial.unlink(missing_ok=True)

    def get(self, video_id: str) -> StoredVideo | None:
        """The video with this id, or None when the id is malformed, unknown, evicted or expired."""
        if not _ID_PATTERN.fullmatch(video_id):
            return None
        with self._lock:
            self._evict_locked()
            video = self._videos.get(video_id)
        if video is None or not video.path.is_file():
            return None
        return video

    def usage(self) -> tuple[int, int]:
        """(number of videos, total bytes) held now."""
        with self._lock:
            return len(self._videos), sum(v.size_bytes for v in self._videos.values())

    def _evict_locked(self) -> None:
        """Removes expired videos, then the oldest ones (never the newest) until the limits fit."""
        limits = self.limits
        if limits.max_age_s > 0:
            cutoff = self._clock() - limits.max_age_s
            for video in [v for v in self._videos.values() if v.created < cutoff]:
                self._remove_locked(video, "expired")
        total = sum(v.size_bytes for v in self._videos.values())
        for video in list(self._videos.values())[:-1]:  # insertion order is publication order
            over_count = limits.max_count > 0 and len(self._videos) > limits.max_count
            over_bytes = limits.max_bytes > 0 and total > limits.max_bytes
            if not (over_count or over_bytes):
                break
            self._remove_locked(video, "over limit")
            total -= video.size_bytes

    def _remove_locked(self, video: StoredVideo, why: str) -> None:
        del self._videos[video.video_id]
        video.path.unlink(missing_ok=True)
        log.info("video %s removed (%s)", video.video_id, why)
