"""ssl_jax: self-supervised visual representation learning in JAX/Flax.

``ssl_jax.embed(source, images)`` and ``ssl_jax.load_encoder(source)`` (``embedding.py``)
are imported on first use, so ``import ssl_jax`` stays light.
"""

_API = ("embed", "load_encoder")


def __getattr__(name: str):
    if name in _API:
        from ssl_jax import embedding

        return getattr(embedding, name)
    raise AttributeError(f"module 'ssl_jax' has no attribute {name!r}")
