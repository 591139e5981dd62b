"""What a run tells its user afterwards: summary files, tables, the HTML report, compare and status."""
