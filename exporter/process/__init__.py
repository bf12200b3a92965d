"""The processes: ``server`` (``exporter serve``), ``worker`` (``exporter worker``),
``supervisor`` (``serve --workers N``), ``hosting`` (what they share), ``embedded`` (the
embedded PostgreSQL) and ``schema`` (the tables and the seed).
"""
