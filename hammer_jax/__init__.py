"""HAMMER in JAX/Flax: hierarchical multi-modal encoder for moment localisation in a video corpus."""

__version__ = "0.1.0"
