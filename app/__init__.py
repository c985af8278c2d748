"""catvton-volume: CatVTON virtual try-on for GPU workers whose runtime and weights live on a volume."""

__version__ = "0.1.0"
