"""The registration modules of credbridge's built-in backend plugins.

Each module here is what one entry point of the ``credbridge`` group names: it only declares
records; their ``open`` and ``validate`` are :class:`~credbridge.core.lazy` references, so the
implementation in ``credbridge.backends.*`` is imported when a config first uses it.
"""
