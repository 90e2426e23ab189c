"""Plot functions: each takes ``(data, ax)`` and returns ``ax``.

One module per topic; ``figures/`` scripts call them on saved Datasets only.
"""
