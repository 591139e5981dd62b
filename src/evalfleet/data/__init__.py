"""Datasets: files and built-ins read into Samples, and images decoded on demand."""
