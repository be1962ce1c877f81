"""Evaluation: metrics, simple and ID baselines, the bundle evaluation, MovieLens-100k (``ml100k/``)."""
