"""Try-ons, from a request's images and options to a saved result: the service (one or a batch, with
progress and Stop), the results store on the volume and its pages, the fair share of the GPU, quotas
counted across workers, and the numbers an operator scrapes.

May import: the base modules, app.images and app.model. Owners and parties arrive as plain strings: this
package never reads a request.
"""
