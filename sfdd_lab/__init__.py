"""The lab beside the app: what a researcher runs on one machine and never ships to a
SuperLink or SuperNode. Loopback launch helpers for tests and demos (`launch`), rounds
without Flower (`local_federation`, `full_protocol`), the centralized baseline
(`centralized`), demo hospitals (`demo_data`), the offline attacks (`attacks`), one
driver per paper table or figure (`experiments`) and the settings tables of the docs
(`settings_tables`). It imports the app (`sfdd_flwr`); the app never imports it."""
