"""Ditto TalkingHead renderer: audio -> motion diffusion (LMDM) -> keypoint warp -> SPADE decode."""
