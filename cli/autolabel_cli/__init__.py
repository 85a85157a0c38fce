"""``autolabel`` / ``kubectl autolabel``: the command line, above both the worker and the cluster.

It sits on top of the layers (see docs/architecture.md): it may import the core (:mod:`autolabel`) and the
worker (``run --local`` runs the worker's pipeline in-process), and nothing imports it.
"""
