"""SimCLR pretraining of the round-0 encoder on the cohort's own training patches (docs/method.md)."""
