"""Data: the synthetic AliProducts generator, dataset preparation (manifest + quarantine) and loaders."""
