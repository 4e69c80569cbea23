"""LightningDataModules for the papers' datasets, each with an embedded default that needs no
download."""
