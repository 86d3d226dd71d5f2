"""LightningModules: one per method. They wire `wsss.functional` losses to optimisation/logging."""
