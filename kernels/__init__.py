"""`fastprod.kernels`: fused paths of the recipe's loss family, label-smoothed CE (seed section 2) and SCE with
O2U per-sample weights (seed section 3), Triton on GPU and chunked torch on CPU, each tested against the plain
torch `reference.reference_loss`. All read their numbers from one `reference.LossParams`.

(Installed under this name from the top-level kernels/ folder: `import kernels` alone may find PyPI's `kernels`.)

- `fused_loss(logits, target, ...)`: one fused pass per row over logits in memory (`kernels/row_loss`).
- `linear_cross_entropy(features, weight, bias, target, ...)`: head + loss without the logits (`kernels/linear_loss`).
"""

from fastprod.kernels.linear_loss import linear_cross_entropy
from fastprod.kernels.row_loss import fused_loss

__all__ = ["fused_loss", "linear_cross_entropy"]
