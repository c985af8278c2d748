"""The documented name of the CatVTON pipeline (README: "Using the pipeline directly"): app.model.pipeline."""

from app.model.pipeline import *  # noqa: F403
from app.model.pipeline import CatVTONPipeline  # noqa: F401
