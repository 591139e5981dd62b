"""Stage kinds beyond answering: a judge's inputs are built from the answering stage's results."""
