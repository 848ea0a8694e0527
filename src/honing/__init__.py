"""Honing: fine-tune pre-trained language models on your own examples, and prove it helped."""

__version__ = "0.1.0"
