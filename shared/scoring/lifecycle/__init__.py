"""A model's life in the registry: packaging, promotion and rollback, rollout gates."""
