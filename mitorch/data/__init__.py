"""Datasets: formats, readers, augmentation presets and the built-in generated dataset."""
