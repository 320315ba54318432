"""Doorping (Liu et al. 2023), the backdoor against dataset distillation, and its naive
baseline: the trigger maths (`trigger`), the malicious client (`client`), where it keeps
its triggers (`files`), the server's scoring of the attack (`scoring`) and the settings."""
