"""What is known before planning: the workload, GPU figures, model architectures, Hub pins."""
