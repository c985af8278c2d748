"""bench/gpu.py's parts, by concern: ``harness`` (device, settings, models in the volume layout, inputs),
``speed`` (seconds per image of each variant and the reference, the FLOP floor), ``sections`` (parity, safety
checker, first request and draft, the cold process) and ``report`` (the device, ratios, the Markdown table).
The command itself (arguments, the order of the run, saving after every step) is bench/gpu.py."""
