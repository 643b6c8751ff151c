"""Evaluation: kNN top-1 and mAP@k at every nesting dim (`python -m trainer.evaluate`)."""
