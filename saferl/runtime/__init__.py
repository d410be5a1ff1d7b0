"""saferl.runtime: Ray actor groups per role, torch.distributed inside them, DeepSpeed engines."""
