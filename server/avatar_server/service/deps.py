"""The shared parts every session uses, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from avatar_server.avatars.registry import AvatarRegistry
from avatar_server.providers.llm.base import LanguageModel
from avatar_server.providers.tts.base import SpeechSynthesizer
from avatar_server.renderers.base import Renderer
from avatar_server.service.metrics import Metrics
from avatar_server.session_store.base import SessionStore
from avatar_server.settings import Settings


@dataclass
class ServiceDeps:
    """Settings, providers, renderer, avatars, session store and metrics."""

    settings: Settings
    avatars: AvatarRegistry
    renderer: Renderer
    llm: LanguageModel
    tts: SpeechSynthesizer
    store: SessionStore
    metrics: Metrics
    instance_id: str
    draining: bool = False
    sessions: set = field(default_factory=set)  # open Session objects
