"""``python -m medrlvr ...`` (and ``torchrun --nproc-per-node N -m medrlvr train ...``): the CLI, with
torchrun's error recorder so a failing rank's exception is reported as the job's root cause."""

import sys

from medrlvr.cli import main
from medrlvr.train.distributed import record

if __name__ == "__main__":
    sys.exit(record(main)())
