"""evalfleet: evaluate (vision-)language models over every GPU, resumably."""

__version__ = "0.1.0"
