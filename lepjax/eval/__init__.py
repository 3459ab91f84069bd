"""Evaluation: bits per byte comparable across tokenizers."""
