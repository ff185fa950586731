"""`mls check`: any Modal LLM app file against the serving rules."""
