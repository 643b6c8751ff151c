"""Distributed training: torchrun's environment, MIG slices, the process group, the launchers."""
