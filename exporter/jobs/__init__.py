"""Jobs: the queue every process shares, and the job manager that runs this process's.

``queue`` (the interface) and ``postgres_queue`` (the ``export_jobs`` table),
``notifications``; ``manager`` (the facade) over ``claims``, ``running``,
``housekeeping``, ``files``, ``counts`` and ``views``.
"""
