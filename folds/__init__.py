"""Cross-validation: data, split, augmentation, the training loop and the fold runner."""
