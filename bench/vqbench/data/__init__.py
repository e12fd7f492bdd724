"""Data sets, pair protocols, alignment and caches."""
