"""Beyond one process: deterministic shards merged into one run, Slurm job arrays."""
