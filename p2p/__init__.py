"""p2p: Pix2Pix for large geospatial rasters."""

__version__ = "0.1.0"
