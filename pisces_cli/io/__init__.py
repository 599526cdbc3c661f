"""Video and prompt input/output: decoding, sampling, preprocessing, prompt mapping, datasets, writing.

Submodules are imported on demand (``from pisces_cli.io.video import read_frames``); this package
imports nothing heavy itself so that the CLI stays fast to start.
"""

from __future__ import annotations
