"""fastprod: a high-throughput trainer for the NetEase AliProducts recipe (see ../shared/RECIPE.md)."""

__version__ = "0.1.0"
