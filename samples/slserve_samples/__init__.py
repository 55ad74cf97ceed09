"""Sample model sources for slserve's functions/ (MiniLM, a 1 GB MLP, a small ONNX classifier)."""
