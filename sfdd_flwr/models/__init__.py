"""Networks: DC's ConvNet for distillation and evaluation (`convnet`) and the network
settings (`settings`). No Flower import."""
