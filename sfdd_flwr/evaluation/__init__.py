"""Evaluation of a labelled synthetic set: DC's protocol of training fresh networks on it
and testing them on real data (`protocol`), the nodes' evaluations combined into one
federated accuracy (`federated`), and the evaluation settings (`settings`). No Flower
import."""
