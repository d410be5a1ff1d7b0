"""saferl.data."""
