"""Serving: the ``Recommender`` facade over catalog state, query encoding and the index; HTTP, export, contact sheet."""
