"""Input: data sources, views and augmentations, the pretraining and evaluation pipelines.

Only the names live here, so `ssl-jax list` can print them without importing TensorFlow."""

# The data sets ssl_jax reads without tfds (``input.dataset``); see sources.py.
LOCAL_KINDS = "digits, colour_digits, npz:<path>, folder:<path>"
