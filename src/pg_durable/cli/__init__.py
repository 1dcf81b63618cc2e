"""The ``pg-durable`` command line: one module per command group.

Logging is configured here (``cli.logging``) and nowhere else; library modules only log.
"""
