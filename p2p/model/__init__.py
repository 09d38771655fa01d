"""Model (torch + numpy only): networks, losses, Pix2Pix step, training, checkpoints, bundles."""
