"""Weights in and out: released PyTorch checkpoints -> workdirs, encoders -> PyTorch.

- ``tensor_files``: reading ``.pth`` / ``.safetensors`` safely, writing them.
- ``torch_layout``: ssl_jax trees <-> torchvision / timm / Sequential-MLP state dicts, and
  the architecture read off a state dict's shapes.
- ``formats``: the key layouts of the official releases (MoCo v1/v2/v3, SimSiam, DINO,
  MAE, torchvision, timm).
- ``importer``: ``ssl-jax import``, a release -> an ssl_jax workdir.

``ssl_jax/export.py`` writes the other direction (``ssl-jax export --format=...``).
"""
