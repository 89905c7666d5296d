"""flowerdemo: a live demo of inference serving at scale, with flowers."""

__version__ = "0.1.0"
