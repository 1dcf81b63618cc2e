"""The workflow graph in Python: model, interpreter, substitution, truthiness — no I/O."""
