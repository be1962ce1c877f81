"""Training: the contrastive video task, the generic loop (resume, accumulation, early stopping, DDP), train()."""
