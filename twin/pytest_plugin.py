"""pytest plugin of the digital twin (fixtures for orchestrator, broker, fleet and faults)."""
