"""Data: named datasets and their normalisation, partitions, per-class real batches
(`datasets`), a node's own data found through its node config (`node_data`), and the
data settings (`settings`). No Flower import."""
