"""Runtimes that run the Ditto networks: PyTorch, ONNX Runtime and TensorRT, behind `models.DittoNetworks`."""
