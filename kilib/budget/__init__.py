"""What the paper series needs of a GPU: an analytic estimate of every stage's memory and time
at real shapes (and, on a GPU, the measured figures beside it)."""
