"""Client-side defences against a curious server: LDPO-RLD and the LocalDP baseline."""
