"""The documented name of the engine (README: ``app.engine.Engine(settings)``): app.model.engine."""

from app.model.engine import *  # noqa: F403
from app.model.engine import Engine  # noqa: F401
