"""Own PyTorch definitions of the Ditto networks, one module per network, with the official state-dict names."""
