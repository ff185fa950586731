"""From a workload and its facts to a plan: decide in data, then explain in words."""
