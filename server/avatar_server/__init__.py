"""Real-time talking-avatar service: chat turns in, lip-synced video out."""

__version__ = "0.1.0"
