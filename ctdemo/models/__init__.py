"""The networks: architectures and presets, training, inference (the one preprocessing entry),
model cards and uploaded models.
"""
