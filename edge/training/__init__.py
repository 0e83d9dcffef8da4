"""Local fine-tuning on the edge: the scheduler that decides when, the child process that trains, the trainers.

| module | what it is |
|---|---|
| `scheduler` | `TrainingScheduler`: rounds, commands and the schedule start runs when load and labels allow |
| `jobs` | `TrainingJob` / `TrainingResult` (the files between agent and child), `StageClock` |
| `runner`, `worker` | `TrainerProcess` starts `python -m edge.training.worker` at low priority, bounded and stoppable |
| `classifier`, `detector` | whole-image classifier (torch) and Ultralytics detector trainers |
| `crop_classifier`, `crop_detector` | template-crops trainers: candidates where a board differs from its template |
| `dataset`, `detection_map` | augmentation and YOLO datasets; mAP as Ultralytics computes it |
| `fedprox` | the proximal term that keeps local training near the global model |
| `batchnorm` | local BatchNorm statistics of a global classifier, computed in a child (policy: `edge.adaptation`) |

Only the agent-side modules (`scheduler`, `jobs`, `runner`) load in the agent; torch and Ultralytics load in the
child.
"""
