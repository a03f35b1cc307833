"""Scripts that produce the evaluation tables in docs/ (one command each, named beside its table)."""
