"""Speech providers: text in, PCM audio (and word timings) out."""
