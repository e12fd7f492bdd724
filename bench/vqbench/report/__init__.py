"""Plots, HTML and PDF rendering of run results."""
