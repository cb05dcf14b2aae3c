"""Command groups of the `mm` CLI: one module per group, each with a `register(app)`.

pipeline/cli.py imports the groups and registers them; each group registers its commands through
registration.py. This package's own module imports nothing, so no group imports it back in a cycle.
"""
