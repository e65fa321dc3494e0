"""The recipe's stages beyond plain training: LR range test, O2U weights, cleaning, ladder."""
