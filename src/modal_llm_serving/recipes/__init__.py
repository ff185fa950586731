"""The serving recipes: the table declaring them, their files and commands, writing one (`new`)."""
