"""The comparison harness and the competitors' pruners (outside the taperprune package)."""
