"""The shared contract: the served encoder, its config and checkpoint, preprocessing, nesting,
device choice, atomic writes and the CLI convention. Imports torch, numpy and pydantic only."""
