"""The lowest layer: the model, the rules and the facts every other layer shares, pure.

``model`` (requests, jobs, progress, checkpoints), ``request`` (validation), ``errors``
(the whole hierarchy and its HTTP answers), ``files`` (names and download headers),
``config`` (settings), ``logs`` and ``metrics``. Imports nothing of the layers above.
"""
