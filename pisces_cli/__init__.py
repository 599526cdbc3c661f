"""pisces: annotation-free post-training of text-to-video models with OT-aligned rewards."""

__version__ = "0.1.0.dev0"
