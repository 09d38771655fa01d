"""Core: configuration, the stage cache, errors, atomic file writes, allowed roots, Dask client."""
