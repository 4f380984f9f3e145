"""Training: LightningModule, DataModule, RD loss, and the Hydra entry point's body."""
