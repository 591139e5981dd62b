"""Running one or more stages on workers: typed messages, the work queue, the worker process, a stage's
driver, the loop that serves every running stage, and the launcher that starts workers (local processes or Ray
actors)."""
