"""The experiment runner around the papers' modules: the ``repro`` command (LightningCLI),
W&B tracking, fault tolerance, RMSProp's monitor, and comparing, benching and dashboarding runs.
Nothing in ``reproductions``' paper modules imports it."""
