"""The serving recipes: where they live, loading one, asking its command, writing one (`new`)."""
