"""The shipped config files, installed as the package ``ssl_jax.configs``: each
``<name>.py`` has ``get_config(preset)`` and ``PRESETS``; ``--config=<name>:<preset>``
finds them from any directory (``ssl_jax/config_files.py``)."""
