"""The on-disk avatar registry: registers uploads once (face analysis cached by content hash) and loads them.

Layout: `<data_dir>/avatars/<id>/` holds `source.<ext>` (the upload as sent),
`avatar.json` (the public description), `analysis.npz` (landmarks, boxes, crop),
and, once asked for, `preview.mp4` and `poster.jpg`. A registration is built in a
temporary folder and renamed into place, so a crash never leaves half an avatar.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from avatar_server.avatars.analysis import (
    FaceAnalysis,
    analyse_faces,
    face_region_size,
    load_analysis,
    resized,
)
from avatar_server.avatars.landmarks import LAYOUTS, FaceLandmarker, MediaPipeFaceLandmarker
from avatar_server.avatars.media_input import decode_media
from avatar_server.avatars.model import AvatarAssets, AvatarInfo
from avatar_server.core.errors import AvatarError, InvalidInput, NotFound, StatusCode
from avatar_server.core.frames import Frame
from avatar_server.renderers.lipsync.idle_motion import IdleMotion

log = logging.getLogger(__name__)

BUILTIN_ID = "astronaut"
EXAMPLE_DIR = Path(__file__).resolve().parents[3] / "example"
EXAMPLE_ANALYSIS = "analysis.npz"  # the example's face analysis, shipped (example/make_analysis.py)
_ID_PATTERN = re.compile(r"^(?:astronaut|av_[0-9a-f]{20})$")
_MAX_NAME_CHARS = 100
_LOADED_CACHE = 4
_PREVIEW_FPS = 25
_PREVIEW_SECONDS = 8.0


def example_source(example_dir: Path) -> Path | None:
    """The file the built-in avatar is made from: the idle video, else the portrait."""
    for name in ("base.mp4", "astronaut.png"):
        if (example_dir / name).is_file():
            return example_dir / name
    return None


def _checked_id(avatar_id: str) -> str:
    """`avatar_id` if it could be one we made; NotFound otherwise (never a path from raw input)."""
    if not isinstance(avatar_id, str) or not _ID_PATTERN.fullmatch(avatar_id):
        raise NotFound(f"no avatar {avatar_id!r}")
    return avatar_id


class AvatarRegistry:
    """Registered avatars on disk, their descriptions in memory and a few loaded ones cached."""

    default_id = BUILTIN_ID

    def __init__(
        self,
        data_dir: Path,
        *,
        max_upload_bytes: int,
        landmarker: FaceLandmarker | None = None,
        example_dir: Path = EXAMPLE_DIR,
    ) -> None:
        self._root = Path(data_dir) / "avatars"
        self._max_upload_bytes = max_upload_bytes
        self._landmarker = landmarker
        self._example_dir = example_dir
        self._infos: dict[str, AvatarInfo] = {}
        self._loaded: OrderedDict[str, AvatarAssets] = OrderedDict()
        self._lock = asyncio.Lock()
        self._landmarker_lock = threading.Lock()

    async def start(self) -> None:
        """Reads the registered avatars and registers the built-in example (instant when cached)."""
        await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)
        self._infos = await asyncio.to_thread(self._scan)
        source = self._example_source()
        if source is None:
            log.warning(
                "no example avatar under %s; the built-in avatar %r is missing",
                self._example_dir,
                BUILTIN_ID,
            )
            return
        data = await asyncio.to_thread(source.read_bytes)
        existing = self._infos.get(BUILTIN_ID)
        if existing is not None and existing.content_sha256 == hashlib.sha256(data).hexdigest():
            return
        log.info("analysing the built-in avatar %s", source)
        await self._register(
            data,
            avatar_id=BUILTIN_ID,
            display_name="Astronaut (example)",
            mime_type="",
            builtin=True,
        )

    async def list(self) -> list[AvatarInfo]:
        """All avatars, the built-in first, then oldest first."""
        return sorted(
            self._infos.values(), key=lambda info: (not info.builtin, info.created, info.id)
        )

    async def get(self, avatar_id: str) -> AvatarInfo:
        """The avatar's description; NotFound if there is none."""
        info = self._infos.get(_checked_id(avatar_id))
        if info is None:
            raise NotFound(f"no avatar {avatar_id!r}")
        return info

    async def load(self, avatar_id: str) -> AvatarAssets:
        """The avatar's frames and face geometry (decoded once, a few kept in memory)."""
        info = await self.get(avatar_id)
        assets = self._loaded.get(avatar_id)
        if assets is None or assets.info.content_sha256 != info.content_sha256:
            assets = await asyncio.to_thread(self._read_assets, info)
            self._loaded[avatar_id] = assets
            while len(self._loaded) > _LOADED_CACHE:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(avatar_id)
        return assets

    async def register(self, data: bytes, *, display_name: str, mime_type: str) -> AvatarInfo:
        """Analyses and stores an uploaded portrait or base video; the same bytes give the same id."""
        if not data:
            raise InvalidInput("the avatar upload is empty")
        if len(data) > self._max_upload_bytes:
            raise InvalidInput(
                f"the avatar upload is {len(data)} bytes; the limit is {self._max_upload_bytes} bytes"
            )
        name = (display_name or "").strip() or "avatar"
        if len(name) > _MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
            raise InvalidInput(
                f"the display name must be at most {_MAX_NAME_CHARS} printable characters"
            )
        avatar_id = "av_" + hashlib.sha256(data).hexdigest()[:20]
        if avatar_id in self._infos:
            return self._infos[avatar_id]
        return await self._register(
            data, avatar_id=avatar_id, display_name=name, mime_type=mime_type, builtin=False
        )

    async def delete(self, avatar_id: str) -> None:
        """Removes an uploaded avatar; the built-in one stays (FAILED_PRECONDITION)."""
        info = await self.get(avatar_id)
        if info.builtin:
            raise AvatarError(
                f"avatar {avatar_id!r} is built in and cannot be deleted",
                code=StatusCode.FAILED_PRECONDITION,
                stage="input",
            )
        async with self._lock:
            self._infos.pop(avatar_id, None)
            self._loaded.pop(avatar_id, None)
            await asyncio.to_thread(self._remove_folder, self._root / avatar_id)

    async def preview(self, avatar_id: str) -> tuple[bytes, bytes]:
        """(idle loop MP4, poster JPEG), made on first request and kept beside the avatar."""
        info = await self.get(avatar_id)
        folder = self._root / avatar_id
        clip_path, poster_path = folder / "preview.mp4", folder / "poster.jpg"
        if not (clip_path.exists() and poster_path.exists()):
            assets = await self.load(avatar_id)
            await asyncio.to_thread(self._write_preview, assets, clip_path, poster_path)
        try:
            return await asyncio.to_thread(
                lambda: (clip_path.read_bytes(), poster_path.read_bytes())
            )
        except FileNotFoundError as error:  # deleted meanwhile
            raise NotFound(f"no avatar {info.id!r}") from error

    # --- work in threads ----------------------------------------------------

    async def _register(
        self, data: bytes, *, avatar_id: str, display_name: str, mime_type: str, builtin: bool
    ) -> AvatarInfo:
        staging = await asyncio.to_thread(
            self._analyse_into_staging, data, avatar_id, display_name, mime_type, builtin
        )
        try:
            async with self._lock:
                if avatar_id in self._infos and not builtin:
                    return self._infos[avatar_id]  # the same upload finished first elsewhere
                info = await asyncio.to_thread(self._move_into_place, staging, avatar_id)
                self._infos[avatar_id] = info
                self._loaded.pop(avatar_id, None)
                return info
        finally:
            await asyncio.to_thread(self._remove_folder, staging)

    def _analyse_into_staging(
        self, data: bytes, avatar_id: str, display_name: str, mime_type: str, builtin: bool
    ) -> Path:
        media = decode_media(data, mime_type)
        analysis = self._face_analysis(media.frames, data, builtin)
        size = face_region_size(media.frames.shape[2], media.frames.shape[1], analysis)
        frames, analysis = resized(media.frames, analysis, size)
        width, height = size
        info = AvatarInfo(
            id=avatar_id,
            display_name=display_name,
            source_type=media.source_type,
            width=width,
            height=height,
            frames=len(frames),
            content_sha256=hashlib.sha256(data).hexdigest(),
            created=datetime.now(UTC),
            builtin=builtin,
        )
        staging = self._root / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            (staging / f"source.{media.extension}").write_bytes(data)
            np.savez(
                staging / "analysis.npz",
                landmarks=analysis.landmarks,
                boxes=analysis.boxes,
                crop_box=analysis.crop_box,
                fps=np.float32(media.fps),
                layout=np.array(analysis.layout),
            )
            record = asdict(info) | {
                "created": info.created.isoformat(),
                "source": f"source.{media.extension}",
            }
            (staging / "avatar.json").write_text(json.dumps(record, indent=2))
        except BaseException:
            self._remove_folder(staging)
            raise
        return staging

    def _move_into_place(self, staging: Path, avatar_id: str) -> AvatarInfo:
        target = self._root / avatar_id
        if target.exists():  # a changed built-in example replaces the old analysis
            retired = self._root / f".tmp-{uuid.uuid4().hex}"
            target.rename(retired)
            self._remove_folder(retired)
        staging.rename(target)
        return self._read_info(target)

    def _read_assets(self, info: AvatarInfo) -> AvatarAssets:
        folder = self._root / info.id
        record = json.loads((folder / "avatar.json").read_text())
        data = (folder / record["source"]).read_bytes()
        media = decode_media(data, size=(info.width, info.height))
        with np.load(folder / "analysis.npz") as analysis:
            landmarks, boxes = analysis["landmarks"], analysis["boxes"]
            crop_box, fps, layout = (
                analysis["crop_box"],
                float(analysis["fps"]),
                str(analysis["layout"]),
            )
        if len(media.frames) != len(landmarks):
            raise AvatarError(
                f"avatar {info.id!r} is damaged: its frames and analysis disagree", stage="input"
            )
        media.frames.flags.writeable = False
        return AvatarAssets(
            info=info,
            frames=media.frames,
            fps=fps,
            landmarks=landmarks,
            landmark_layout=layout,
            face_boxes=boxes,
            cache_dir=folder,
            crop_box=crop_box,
            source_path=folder / record["source"],
        )

    def _write_preview(self, assets: AvatarAssets, clip_path: Path, poster_path: Path) -> None:
        from avatar_server.media.clip import (
            encode_clip,
        )  # the media layer, only when a preview is asked

        if assets.info.source_type == "image":
            motion = IdleMotion(
                assets.landmarks[0],
                LAYOUTS[assets.landmark_layout],
                assets.info.width,
                assets.info.height,
                fps=_PREVIEW_FPS,
                period_frames=int(_PREVIEW_SECONDS * _PREVIEW_FPS),
            )
            frames = [
                motion.apply(assets.frames[0], index) for index in range(motion.period_frames)
            ]
            fps = _PREVIEW_FPS
        else:
            frames = list(assets.frames)
            fps = max(1, round(assets.fps))
        clip = encode_clip([Frame(frame) for frame in frames], fps)
        ok, poster = cv2.imencode(
            ".jpg",
            cv2.cvtColor(assets.frames[0], cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 88],
        )
        if not ok:
            raise AvatarError("could not encode the poster image", stage="encode")
        for path, content in ((clip_path, clip), (poster_path, poster.tobytes())):
            partial = path.with_suffix(path.suffix + ".part")
            partial.write_bytes(content)
            partial.replace(path)

    def _scan(self) -> dict[str, AvatarInfo]:
        infos = {}
        for folder in sorted(self._root.iterdir()):
            if folder.name.startswith(".tmp-"):
                self._remove_folder(folder)  # left by a crash mid-registration
                continue
            if not _ID_PATTERN.fullmatch(folder.name):
                continue
            try:
                infos[folder.name] = self._read_info(folder)
            except (OSError, ValueError, KeyError) as error:
                log.warning("skipping damaged avatar folder %s: %s", folder, error)
        return infos

    @staticmethod
    def _read_info(folder: Path) -> AvatarInfo:
        record = json.loads((folder / "avatar.json").read_text())
        if not (folder / "analysis.npz").exists() or not (folder / record["source"]).exists():
            raise ValueError("incomplete avatar folder")
        return AvatarInfo(
            id=record["id"],
            display_name=record["display_name"],
            source_type=record["source_type"],
            width=int(record["width"]),
            height=int(record["height"]),
            frames=int(record["frames"]),
            content_sha256=record["content_sha256"],
            created=datetime.fromisoformat(record["created"]),
            builtin=bool(record["builtin"]),
        )

    def _example_source(self) -> Path | None:
        return example_source(self._example_dir)

    def _face_analysis(self, frames: np.ndarray, data: bytes, builtin: bool) -> FaceAnalysis:
        """The example's shipped analysis when `data` are its bytes, so serving the built-in
        avatar needs no face landmarker; otherwise the landmarker's analysis of `frames`."""
        if builtin:
            shipped = load_analysis(
                self._example_dir / EXAMPLE_ANALYSIS, source_sha256=hashlib.sha256(data).hexdigest()
            )
            if shipped is not None:
                log.info("built-in avatar: using the shipped face analysis %s", EXAMPLE_ANALYSIS)
                return shipped
        return analyse_faces(frames, self._face_landmarker())

    def _face_landmarker(self) -> FaceLandmarker:
        with self._landmarker_lock:
            if self._landmarker is None:
                self._landmarker = MediaPipeFaceLandmarker()
            return self._landmarker

    @staticmethod
    def _remove_folder(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
