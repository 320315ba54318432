"""Attacks as tools: the curious-server leakage attack and backdoor (Doorping) clients."""
