"""The session stores keep what a session needs to resume on another stream or instance."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from avatar_server.core.errors import InvalidInput, StatusCode
from avatar_server.session_store import SessionState, SessionStoreUnavailable, create_session_store
from avatar_server.session_store.base import state_from_dict, state_to_dict
from avatar_server.session_store.memory import MemorySessionStore
from avatar_server.session_store.redis_store import RedisSessionStore
from avatar_server.session_store.sqlite import SqliteSessionStore
from avatar_server.settings import load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.local_cluster import RedisServer, free_port, missing_programs  # noqa: E402


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if "redis-server" in missing_programs():
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def make_state(session_id: str = "s-1") -> SessionState:
    return SessionState(
        session_id=session_id,
        avatar_id="astronaut",
        voice="en-us",
        language="ko-KR",
        system_prompt="Be brief.",
        clock_rate=16000,
        fps=25,
        history=[("user", "안녕하세요"), ("assistant", 'Hello! "quoted"\nnew line')],
        media_position=123_840,
        next_frame=193,
        next_sequence=7,
        completed_turns=1,
    )


def open_store(kind: str, tmp_path: Path, redis_url: str | None, *, ttl_s: float = 0.0):
    if kind == "memory":
        return MemorySessionStore(ttl_s=ttl_s)
    if kind == "sqlite":
        return SqliteSessionStore(tmp_path / "sessions.sqlite3", ttl_s=ttl_s)
    # Each test gets its own key prefix, so tests sharing the module's Redis never collide.
    return RedisSessionStore(redis_url or "", ttl_s=ttl_s, key_prefix=f"test:{tmp_path.name}:")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backing(kind: str, request: pytest.FixtureRequest) -> str | None:
    """The Redis URL for the redis store (starting Redis only when that store is tested)."""
    return request.getfixturevalue("redis_url") if kind == "redis" else None


@pytest.fixture
async def store(kind: str, tmp_path: Path, backing: str | None) -> AsyncIterator:
    opened = open_store(kind, tmp_path, backing)
    yield opened
    await opened.aclose()


async def test_saved_state_loads_back_equal(store) -> None:
    state = make_state()
    await store.save(state)
    loaded = await store.load("s-1")
    assert loaded == state
    assert loaded.updated_at > 0
    assert loaded.history[0] == ("user", "안녕하세요")  # tuples, not lists, after a round trip


async def test_unknown_session_is_none(store) -> None:
    assert await store.load("never-saved") is None


async def test_save_replaces_and_later_edits_do_not_leak(store) -> None:
    state = make_state()
    await store.save(state)
    state.history.append(("user", "second turn"))
    state.media_position += 16000
    assert (await store.load("s-1")).media_position == 123_840
    await store.save(state)
    loaded = await store.load("s-1")
    assert loaded.history[-1] == ("user", "second turn")
    assert loaded.media_position == 139_840


async def test_delete_forgets(store) -> None:
    await store.save(make_state())
    await store.delete("s-1")
    await store.delete("s-1")  # deleting twice is fine
    assert await store.load("s-1") is None


async def test_concurrent_saves_all_land(store) -> None:
    await asyncio.gather(*(store.save(make_state(f"s-{index}")) for index in range(40)))
    loaded = await asyncio.gather(*(store.load(f"s-{index}") for index in range(40)))
    assert [state.session_id for state in loaded] == [f"s-{index}" for index in range(40)]


async def test_idle_sessions_expire_after_ttl(
    kind: str, tmp_path: Path, backing: str | None
) -> None:
    store = open_store(kind, tmp_path, backing, ttl_s=0.3)
    try:
        await store.save(make_state("old"))
        await asyncio.sleep(0.5)
        await store.save(make_state("fresh"))
        assert await store.load("old") is None
        assert (await store.load("fresh")).session_id == "fresh"
    finally:
        await store.aclose()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_second_store_on_the_same_backing_sees_the_session(
    kind: str, tmp_path: Path, backing: str | None
) -> None:
    """What another instance (or this one after a restart) needs to resume a session."""
    writer = open_store(kind, tmp_path, backing)
    await writer.save(make_state())
    await writer.aclose()
    reader = open_store(kind, tmp_path, backing)
    try:
        loaded = await reader.load("s-1")
        assert loaded is not None
        loaded.updated_at = 0.0
        assert loaded == make_state()
    finally:
        await reader.aclose()


async def test_unreachable_redis_is_a_retriable_unavailable_error() -> None:
    store = RedisSessionStore(f"redis://:secret@127.0.0.1:{free_port()}/0", timeout_s=1.0)
    try:
        with pytest.raises(SessionStoreUnavailable) as caught:
            await store.load("s-1")
    finally:
        await store.aclose()
    assert caught.value.code == StatusCode.UNAVAILABLE
    assert caught.value.retriable and caught.value.stage == "session"
    assert "secret" not in caught.value.message


async def test_unwritable_sqlite_path_is_an_unavailable_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    store = SqliteSessionStore(tmp_path / "a-file" / "sessions.sqlite3")
    with pytest.raises(SessionStoreUnavailable, match="a-file"):
        await store.save(make_state())
    await store.aclose()


def test_state_from_a_newer_version_ignores_unknown_fields() -> None:
    data = state_to_dict(make_state())
    data["added_in_a_later_version"] = {"x": 1}
    del data["completed_turns"]  # and an older writer's missing field takes its default
    state = state_from_dict(data)
    assert state.session_id == "s-1" and state.completed_turns == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("memory", MemorySessionStore), ("sqlite", SqliteSessionStore), ("Redis", RedisSessionStore)],
)
async def test_settings_choose_the_store(name: str, expected: type, tmp_path: Path) -> None:
    settings = load_settings(session_store=name, session_store_path=tmp_path / "s.sqlite3")
    store = create_session_store(settings)
    assert isinstance(store, expected)
    await store.aclose()


def test_unknown_store_name_is_a_precise_error() -> None:
    with pytest.raises(InvalidInput, match="unknown session store 'etcd'"):
        create_session_store(load_settings(session_store="etcd"))
