"""Carbon accounting: projection of measured windows to the target budget."""
