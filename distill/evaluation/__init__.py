"""Evaluation: verifiable tasks and answer checking, pass@k / majority / time budget, the lm-eval bridge,
benchmarks."""
