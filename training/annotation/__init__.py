"""EM-CoT annotation: motion primitives, annotators, VLM backends and prompts, the dataset pipeline."""
