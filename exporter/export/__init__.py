"""One export, from PostgreSQL to its files: ``pipeline.export_csv``.

``rows`` (ranges of ids, the cursor or COPY), ``copy_reader`` (COPY through asyncpg),
``connection`` (the export's own session), ``csvfmt`` and ``query`` (pure), ``outputs``
(the CSV and its gzip copy), ``threads`` (blocking work, cancellable). Imports the export
store's interface and the core, nothing above.
"""
