"""The research harness: ablation grids, their reports and seed statistics (not the product)."""
