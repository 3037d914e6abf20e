"""Built-in VM launchers of credbridge, registered through the ``credbridge`` entry points."""
