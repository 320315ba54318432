"""Augmentations used while synthesising (DSA)."""
