"""Run bookkeeping: the run directory and what it holds (`artifacts`), and the rounds'
checkpoints, evaluation schedule, metrics, progress lines and resume (`recorder`).
No Flower import."""
