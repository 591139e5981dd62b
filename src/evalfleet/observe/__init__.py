"""What a run tells its user while it runs: progress, GPU sampling and the run's log."""
