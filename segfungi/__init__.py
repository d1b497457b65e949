"""segfungi: in-context semantic segmentation with FUNGI features of frozen ViTs."""

__version__ = "0.1.0"
