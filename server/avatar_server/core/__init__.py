"""Types every layer shares: frames, spans on the media clock, errors. Imports nothing above it."""
