"""Operating a deployment: backup and restore of the registry's state, and the readiness report (doctor)."""
