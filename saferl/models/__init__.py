"""saferl.models."""
