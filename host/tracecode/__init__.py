"""TraceCode host tools: EN crypto, export batches, matching, sync station, virtual badges."""

__version__ = "0.1.0"
