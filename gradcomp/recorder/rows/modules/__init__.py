"""The built-in ``"rows"`` module types, one file each; importing this package registers them."""

from gradcomp.recorder.rows.modules import conv, embedding, layernorm, linear

__all__ = ["conv", "embedding", "layernorm", "linear"]
