"""One folder per method: its model, module, training plan and method-only transforms.

A new method is a folder here plus one line in :mod:`mosaicvi.registry`; the contract test suite
(``tests/contract``) then checks it like every other model.
"""
