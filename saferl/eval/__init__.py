"""saferl.eval."""
