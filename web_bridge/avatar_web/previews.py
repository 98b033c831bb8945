"""Avatar idle loops and posters fetched once over gRPC and kept in a small LRU cache."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import grpc.aio
from avatar.v1 import avatar_pb2

from avatar_web.upstream import Upstream, explain_credential_refusal

log = logging.getLogger(__name__)


class PreviewCache:
    """GetAvatarPreview results by avatar id ("" is the server's default avatar)."""

    def __init__(self, upstream: Upstream, entries: int, timeout_s: float = 30.0) -> None:
        self._upstream = upstream
        self._entries = entries
        self._timeout = timeout_s
        self._cache: OrderedDict[str, avatar_pb2.AvatarPreview] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, avatar_id: str) -> avatar_pb2.AvatarPreview:
        """The preview, from the cache or the service (raises grpc.aio.AioRpcError)."""
        if (hit := self._cache.get(avatar_id)) is not None:
            self._cache.move_to_end(avatar_id)
            return hit
        async with self._lock:  # one fetch at a time: previews are a few hundred kB
            if (hit := self._cache.get(avatar_id)) is not None:
                return hit
            preview = await self._upstream.avatar_preview(avatar_id, self._timeout)
            if self._entries:
                # Keep it under its own id too: "" (default) and "astronaut" are the same avatar.
                for key in {avatar_id, preview.avatar.id}:
                    self._cache[key] = preview
                while len(self._cache) > self._entries:
                    self._cache.popitem(last=False)
            return preview

    async def warm(self) -> None:
        """Fetches the default avatar's preview ahead of the first page; a failure is logged
        (the first page asks again and reports it)."""
        try:
            await self.get("")
        except grpc.aio.AioRpcError as exc:
            if explain_credential_refusal(exc.code(), exc.details() or "") is None:
                log.warning("could not prefetch the default avatar preview: %s %s",
                            exc.code().name, exc.details())
