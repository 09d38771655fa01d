"""Inference: tiled windows, the translator, scene prediction, mosaics, evaluation."""
