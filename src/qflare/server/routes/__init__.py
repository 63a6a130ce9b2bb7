"""HTTP routes: thin adapters from requests to the orchestrator and registry."""
