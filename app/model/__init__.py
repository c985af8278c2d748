"""The model: the CatVTON pipeline over diffusers parts, the weights it needs on the volume (and their
download and checks), the engine that loads it lazily and holds it, the speed-ups and their compile cache,
the safety checker, and the tiny random-weight model set that tests and demos load the same way.

May import: app.config, app.errors, app.validation, app.files and app.images. Knows nothing of owners,
results on the volume, or any door.
"""
