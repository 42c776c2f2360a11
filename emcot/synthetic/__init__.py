"""The synthetic pushing world: scenes, EM-CoT samples and tiny policies for the demo, tests and smoke runs."""
