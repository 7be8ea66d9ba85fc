"""Imported only by the forkserver of Spool's DataLoader workers (``worker_context`` preloads
it): the server, and every worker it forks, ignore SIGTERM.

A scheduler (SLURM's preemption, ``kill -TERM -PGID``, a container's stop) signals every
process of the job, the server too. A server killed by it orphans the workers, whose
watchdog, which watches their parent, then takes the main process for dead: they exit and
the batch in flight is lost. The main process decides when to stop (a training run first
saves a checkpoint); the server ends when it does.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
