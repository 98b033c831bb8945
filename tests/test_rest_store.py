"""The bounded video store: whole-file publishing, id checks, count/size/age eviction."""

from __future__ import annotations

from avatar_web.video_store import StoreLimits, VideoStore


class FakeClock:
    """A settable clock (labelled fake) so age limits are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def put(store: VideoStore, size: int) -> str:
    partial = store.partial_path()
    partial.write_bytes(b"x" * size)
    return store.publish(partial).video_id


def test_published_video_is_found_and_partial_is_gone(tmp_path):
    store = VideoStore(tmp_path, StoreLimits(0, 0, 0))
    partial = store.partial_path()
    partial.write_bytes(b"abc")
    video = store.publish(partial)
    assert not partial.exists()
    assert store.get(video.video_id).path.read_bytes() == b"abc"
    assert store.usage() == (1, 3)


def test_ids_are_strict(tmp_path):
    store = VideoStore(tmp_path, StoreLimits(0, 0, 0))
    video_id = put(store, 1)
    assert len(video_id) == 32
    for bad in ["../" + video_id, video_id.upper(), video_id + ".mp4", "", "0" * 31, "/etc/passwd"]:
        assert store.get(bad) is None
    assert store.get("0" * 32) is None


def test_count_limit_evicts_oldest_first(tmp_path):
    store = VideoStore(tmp_path, StoreLimits(max_bytes=0, max_age_s=0, max_count=2))
    first, second, third = put(store, 1), put(store, 1), put(store, 1)
    assert store.get(first) is None
    assert not (tmp_path / f"{first}.mp4").exists()
    assert store.get(second) and store.get(third)


def test_size_limit_evicts_oldest_but_keeps_the_newest(tmp_path):
    store = VideoStore(tmp_path, StoreLimits(max_bytes=250, max_age_s=0, max_count=0))
    first, second = put(store, 100), put(store, 100)
    third = put(store, 100)
    assert store.get(first) is None and store.get(second) and store.get(third)
    huge = put(store, 1000)  # alone over the limit: kept, everything older goes
    assert store.get(huge) and store.get(second) is None and store.get(third) is None
    assert store.usage() == (1, 1000)


def test_age_limit_expires_videos(tmp_path):
    clock = FakeClock()
    store = VideoStore(tmp_path, StoreLimits(max_bytes=0, max_age_s=60, max_count=0), clock=clock)
    old = put(store, 1)
    clock.now += 30
    young = put(store, 1)
    clock.now += 31
    assert store.get(old) is None and store.get(young)
    clock.now += 30
    assert store.get(young) is None
    assert list(tmp_path.glob("*.mp4")) == []


def test_restart_reindexes_kept_videos_and_drops_partials(tmp_path):
    store = VideoStore(tmp_path, StoreLimits(0, 0, 2))
    kept = [put(store, 5) for _ in range(2)]
    leftover = store.partial_path()
    leftover.write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not a video")
    reopened = VideoStore(tmp_path, StoreLimits(0, 0, 2))
    assert not leftover.exists()
    assert all(reopened.get(video_id) for video_id in kept)
    newest = put(reopened, 5)
    assert reopened.get(kept[0]) is None and reopened.get(newest)
    assert (tmp_path / "notes.txt").exists()


def test_discard_removes_unpublished_file(tmp_path):
    store = VideoStore(tmp_path, StoreLimits(0, 0, 0))
    partial = store.partial_path()
    partial.write_bytes(b"broken")
    store.discard(partial)
    assert not partial.exists() and store.usage() == (0, 0)
