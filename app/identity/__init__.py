"""Who is calling: logins, API keys and visitors (signed cookies), sessions and sign-in limits, whose
results a caller may see, and the readers of the identity the guard put on a request (``callers``).

May import: the base modules and app.tryons (the sign-in limits count like quotas). No web framework
at run time: the guard that sets the identity is in app.web.
"""
