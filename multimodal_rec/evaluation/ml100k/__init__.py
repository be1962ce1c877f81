"""MovieLens-100k: the loader, the text-item model (user tower over movie texts) and the evaluation run."""
