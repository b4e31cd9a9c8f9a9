"""Teaching methods, one file each, listed in the explicit dict METHODS of registry.py.

A method is a class with a frozen `Settings` dataclass and `step(batch)`, which makes one update
of the student (and of its teacher, if it has one); see base.py for the interface. The settings
are defined in settings.py, which imports no torch, so that params.yaml is checked with them
before any job runs. In params.yaml a method entry may name its implementation with `method:`
to define a variant, e.g. `reed_hard: {method: bootstrap, mode: hard, beta: 0.8}`.
"""
