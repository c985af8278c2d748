"""catvton-volume: CatVTON virtual try-on for GPU workers whose runtime and weights live on a volume.

The package in layers; each imports only from those above it in this list (tests/test_imports.py checks):

- ``app.config``, ``app.errors``, ``app.validation``, ``app.files``: settings, the errors every layer
  raises, argument checks, and files written whole (a temp name, then a rename);
- ``app.images``: pictures and masks (decoding, crops, the human parser, mask tools, paste-back);
- ``app.model``: the CatVTON pipeline, its weights, the engine that holds it, speed-ups, safety checker;
- ``app.tryons``: a try-on from request to saved result: the service, the results store, fair queue,
  quotas and metrics;
- ``app.identity``: who is calling (logins, keys, visitors) and whose results they may see;
- ``app.studio``: the Gradio Blocks page and its script endpoints;
- ``app.web``: the HTTP application: the guard, Gradio's door, REST and results routes, assembly, serving;
- ``app.cli``, ``app.doctor``, ``python -m app``: the commands.

``app.pipeline`` and ``app.engine`` are the documented names of ``app.model.pipeline`` and ``app.model.engine``.
"""

__version__ = "0.1.0"
