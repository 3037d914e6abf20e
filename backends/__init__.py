"""Built-in sources, sinks and stores of credbridge.

Each module is a plugin registered through the ``credbridge`` entry-point group, exactly like a
third-party plugin (see pyproject.toml). Heavy client libraries are imported inside the
``open`` callables, so loading these modules stays cheap.
"""
