"""Training data: LeRobot readers and writer, video frames, VQA, future frames, EM-CoT samples."""
