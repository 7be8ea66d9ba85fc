"""Datasets: labelled videos and their clips, token caches, synthetic data."""
