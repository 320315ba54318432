"""Offline attacks a user runs against their own setting: the curious server's leakage
attack on an observed client update (`leakage`, command `leak`)."""
