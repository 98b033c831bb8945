"""A command-line client for avatar.v1.AvatarService: say or chat, save the reply as MP4."""
