"""Shared code for the six pipeline stages: paths, settings, file I/O and model helpers.

The numbered scripts at the repository root hold each stage's own logic; this package holds
only what two or more stages need, so there is exactly one source of truth for it.
"""
