"""Search spaces of `hfld tune` as data: one YAML file per preset family (schema: pipeline/stages/tune/space.py).

A package only so the files ship inside an installed `hfld` (importlib.resources finds them).
"""
