"""The HTTP application: the guard in front of every door, the sign-in pages, Gradio's door, the REST and
results routes, the API's error replies, body limits, the early /ping, and the assembly that mounts the
studio (``server.create_app``) and serves it.

May import every package below it: the base modules, app.images, app.model, app.tryons, app.identity and
app.studio.
"""
