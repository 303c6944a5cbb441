"""A real single-node SLURM cluster on loopback, started and torn down by the cluster tests."""
