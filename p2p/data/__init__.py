"""Data: scenes cut into chips (tiling, chip grid, chip store), band stats, datasets, imports."""
