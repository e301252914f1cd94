"""Reports from run folders: ``compare(paths, out)`` writes a results table, plots and an HTML page.

This layer only reads the files a run leaves behind (config.yaml, metrics.jsonl, summary.json,
reliability.json); it never imports the engine.
"""
from .compare import Report, compare

__all__ = ["Report", "compare"]
