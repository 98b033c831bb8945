"""Hand-written companions of the avatar.v1 contract that every side shares (service, bridge, clients)."""
