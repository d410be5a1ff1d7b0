"""saferl.runtime."""
