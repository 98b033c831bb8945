"""The stages of a turn, one unit each: text, sentences, speech, then render + segment (video)
or audio-only."""
