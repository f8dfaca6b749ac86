"""Pure PyTorch networks, the edit-direction matrix and the losses. No Ray, no MLflow, no files (loaders live in models.load)."""
