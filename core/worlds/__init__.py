"""Synthetic worlds the project builds itself (no downloads): tiny tokenizers and models trained from scratch."""
