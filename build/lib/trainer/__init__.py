"""MoCo v2 + Matryoshka Representation Learning: the training half of the product."""
