"""Prometheus metrics of the service: sessions, turns, latencies, render speed, errors."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """All service metrics on one registry (one per server, so tests can run several)."""

    def __init__(self) -> None:
        self._http = None  # the /metrics HTTP server, once serving
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_sessions = Gauge("avatar_active_sessions", "Open Converse sessions", registry=r)
        self.active_turns = Gauge("avatar_active_turns", "Turns running now", registry=r)
        self.turns = Counter("avatar_turns", "Turns by outcome", ["outcome"], registry=r)
        self.errors = Counter("avatar_errors", "Errors by stage and status code", ["stage", "code"], registry=r)
        self.first_text = Histogram(
            "avatar_time_to_first_text_seconds", "Turn start to first text", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.first_audio = Histogram(
            "avatar_time_to_first_audio_seconds", "Turn start to first audio", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.first_video = Histogram(
            "avatar_time_to_first_video_seconds", "Turn start to first video segment", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cancel_stop = Histogram(
            "avatar_cancel_stop_seconds", "Cancel request to every stage stopped", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.frames = Counter("avatar_rendered_frames", "Video frames rendered and encoded", registry=r)
        self.realtime_factor = Histogram(
            "avatar_render_realtime_factor", "Render+encode seconds per media second",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0), registry=r,
        )
        self.encode_cpu = Counter(
            "avatar_encode_cpu_seconds", "CPU seconds spent encoding (colour conversion, x264, AAC) "
            "in the encoding threads; x264's own threads are not counted when encoder_threads > 1",
            registry=r,
        )
        self.send_queue = Gauge("avatar_send_queue_depth", "Events waiting to be sent, all sessions", registry=r)

    def serve(self, port: int, host: str) -> None:
        """Exposes /metrics over HTTP on `host:port` until `stop`."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
