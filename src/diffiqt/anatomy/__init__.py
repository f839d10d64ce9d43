"""Real brains: the bundled and user-supplied high-field brains, the test brains, and their tissue maps."""
