"""slserve: serverless inference with snapshotted model functions."""

__version__ = "0.1.0"
