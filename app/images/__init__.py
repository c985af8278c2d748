"""Pictures and masks: decoding uploads within the pixel limit, the reference's crop and pad as boxes,
automatic masks from the human parser, the mask tools, and pasting a result back into the photo.

May import: app.config, app.errors, app.validation, app.files. Knows nothing of models, try-ons or the web.
"""
