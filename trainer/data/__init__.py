"""Datasets and the training input pipeline: the built-in shapes, decoding, MoCo v2 augmentation."""
