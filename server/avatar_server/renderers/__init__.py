"""Renderers: audio in, video frames of an avatar out (CPU lip-sync, Ditto)."""
