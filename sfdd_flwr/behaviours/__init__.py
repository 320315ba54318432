"""Client behaviours: the base class, the honest behaviour, the simulation settings that
pick malicious partitions (`base`), and the registry of every behaviour by name
(`registry`). A malicious behaviour lives in its attack's room and registers itself."""
