"""Built-in sources, sinks and stores of credbridge.

Each is registered through the ``credbridge`` entry-point group, exactly like a third-party
plugin (see pyproject.toml): the entry points name the small registration modules in
``credbridge.backends.hooks``, whose records point ``open`` at the implementation here with
``lazy``, so this package's modules (and the client libraries they import) load only when a
config uses them.
"""
