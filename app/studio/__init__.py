"""The try-on studio: the Gradio Blocks page (person editor with mask tools, garments, Run with progress
and Stop, the gallery), its named endpoints for ``gradio_client`` scripts, the examples, and the record of
which pages are still listening.

May import: the base modules, app.images, app.model, app.tryons and app.identity. It never imports
app.web: the web layer mounts the studio and puts the caller on each request.
"""
