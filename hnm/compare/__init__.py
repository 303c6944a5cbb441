"""`hnm compare`: methods x seeds on one cohort, sharing tiles and round-0 features, and their table."""
