"""The training process: ``python -m edge.training.worker RUN_DIR/job.json``.

Runs at the job's niceness with its thread count, dies with the agent that started it (Linux parent-death
signal), prints progress as JSON lines, and on success writes ``delta.safetensors`` then ``result.json`` (the
result last, so a result file always has its delta). A bad input ends with ``error: ...`` on stderr and exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edge.training.jobs import DELTA_FILE, RESULT_FILE, TrainingJob
from runtime.processes import die_with_parent

EXIT_TRAINING_FAILED = 2


def run(job: TrainingJob) -> None:
    import safetensors.numpy

    from schemas.manifests import Task
    from schemas.tensors import contiguous

    if job.task == Task.CLASSIFY:
        from edge.training.classifier import train_classifier as train
    else:
        from edge.training.detector import train_detector as train

    def report(line: str) -> None:
        print(line, flush=True)

    result, delta = train(job, report)
    tmp = job.work_dir / f".{DELTA_FILE}.tmp"
    safetensors.numpy.save_file({key: contiguous(value) for key, value in delta.items()}, str(tmp))
    tmp.replace(job.work_dir / DELTA_FILE)
    tmp = job.work_dir / f".{RESULT_FILE}.tmp"
    tmp.write_text(result.model_dump_json(indent=1), encoding="utf-8")
    tmp.replace(job.work_dir / RESULT_FILE)
    print(result.model_dump_json(), flush=True)


def main(argv: list[str]) -> int:
    die_with_parent()
    if len(argv) != 1:
        print("error: usage: python -m edge.training.worker RUN_DIR/job.json", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    job = TrainingJob.model_validate_json(Path(argv[0]).read_bytes())
    os.nice(job.nice)
    import torch

    torch.set_num_threads(job.threads)
    from schemas.errors import FedinspectError

    try:
        run(job)
    except FedinspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
