"""A session store in Redis, shared by every instance behind the balancer."""

from __future__ import annotations

import json
import math
import time

import redis.asyncio as redis
from redis.exceptions import RedisError

from avatar_server.session_store.base import (
    SessionState,
    SessionStoreUnavailable,
    state_from_dict,
    state_to_dict,
)


class RedisSessionStore:
    """One JSON string per session under `<prefix><id>`, expiring `ttl_s` after its last save."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 0.0,
        key_prefix: str = "avatar:session:",
        timeout_s: float = 2.0,
    ) -> None:
        self._url = url
        self._ttl_ms = math.ceil(ttl_s * 1000) if ttl_s > 0 else None
        self._key_prefix = key_prefix
        # Short timeouts: a save on the drain path must not outlive the pod's grace period.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )

    async def load(self, session_id: str) -> SessionState | None:
        try:
            raw = await self._client.get(self._key(session_id))
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from error
        return None if raw is None else state_from_dict(json.loads(raw))

    async def save(self, state: SessionState) -> None:
        state.updated_at = time.time()
        try:
            await self._client.set(
                self._key(state.session_id), json.dumps(state_to_dict(state)), px=self._ttl_ms
            )
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from error

    async def delete(self, session_id: str) -> None:
        try:
            await self._client.delete(self._key(session_id))
        except (RedisError, OSError) as error:
            raise self._unavailable(error) from error

    async def aclose(self) -> None:
        await self._client.aclose()

    def _key(self, session_id: str) -> str:
        return self._key_prefix + session_id

    def _unavailable(self, error: Exception) -> SessionStoreUnavailable:
        """Names the store without the URL's password."""
        where = self._client.connection_pool.connection_kwargs.get("host", "redis")
        return SessionStoreUnavailable(
            f"redis session store at {where}: {type(error).__name__}: {error}"
        )
