"""Real vLLM on this machine: the recipe's own command, CPU transforms, the embedded model."""
