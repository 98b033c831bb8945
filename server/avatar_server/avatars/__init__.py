"""Avatars: registration (face analysis, crop, cache) and the on-disk registry."""
