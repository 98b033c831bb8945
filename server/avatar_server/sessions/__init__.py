"""Sessions: admission and ownership (registry), a session's request loop, its state and persistence."""
