"""Local fine-tuning on the edge: the scheduler that decides when, the child process that trains, the trainers."""
