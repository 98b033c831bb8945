"""The gRPC edge: servicer, sessions, and the one place events become protobuf."""
