"""CLI command groups, one module per stage; each exposes `register(app)`.

Commands parse options and delegate to the library (`vectune.pipeline` and the stage
packages); they hold no logic of their own.
"""
