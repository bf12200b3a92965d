"""The command-line client: ``exporter export``, ``exporter status``, ``exporter cancel``.

``exports`` talks to the service (start, follow, download and resume); ``commands`` is the
command line over it. Nothing here imports the server stack (Quart, Hypercorn,
psycopg, isal): the client must start fast, and tests/test_client_imports.py keeps it so.
"""
