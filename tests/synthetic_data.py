"""A small synthetic AliProducts-format dataset, prepared: the fixture data of many test folders (a helper
module, not a test)."""

from __future__ import annotations

from pathlib import Path


def prepared_dataset(base: Path, *, classes: int, train_images: int, val_per_class: int, noise: float = 0.0,
                     seed: int = 0) -> Path:
    """Synthesise 40x40 images under base/raw, prepare them into base/prepared and return that directory."""
    from fastprod.data.prepare import prepare
    from fastprod.data.synth import synthesize

    synthesize(base / "raw", classes=classes, train_images=train_images, val_per_class=val_per_class, noise=noise,
               seed=seed, size=(40, 40), corrupt=0, workers=1)
    prepare(base / "raw", base / "prepared", workers=1)
    return base / "prepared"
