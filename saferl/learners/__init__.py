"""saferl.learners."""
