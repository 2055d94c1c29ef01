"""bcc-lightning: benign vs malignant classifiers for breast microscopy images (Lightning + Hydra)."""

__version__ = "0.1.0"
