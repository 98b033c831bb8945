"""Browser bridge: serves the player page and relays WebSockets to the gRPC Converse stream."""
