"""The FFCV backend (being written)."""

from __future__ import annotations

from fastprod.data.loaders.base import Loader


class FFCVLoader(Loader):  # placeholder until the backend lands
    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError("data.backend=ffcv is not implemented yet")
