"""The benchmark package (engine by the coordinator)."""
