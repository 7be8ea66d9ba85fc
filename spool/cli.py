"""The ``spool`` command line: ``spool demo | extract | cache | train | eval | backbone``.

Each subcommand lives in ``spool/commands/<name>.py`` with a ``register(subparsers)``
function that adds its parser and sets ``func``; command modules import torch only when they
run, so ``spool --help`` is quick. A user mistake ends with one line on stderr and exit code 2;
``--debug`` (or ``SPOOL_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import signal
import sys
import threading

from spool import __version__

COMMANDS = ("demo", "extract", "cache", "train", "eval", "backbone")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spool",
        description="Spool: video features, training and evaluation with a bidirectional "
                    "temporal transformer over a foundation image model.",
        epilog="Run 'spool COMMAND --help' for a command's options.")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks (also SPOOL_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"spool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"spool.commands.{name}"
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(sub)
    return parser


# Commands whose finished work is kept (atomic outputs) and that a rerun continues: what.
RESUMABLE = {"extract": "finished videos are kept (with --offload-dir, a long video's finished "
                        "layers too)",
             "cache": "what was finished is kept"}


class Terminated(BaseException):
    """SIGTERM (a scheduler's, torchrun's), raised where the process is, as Ctrl-C is; not an
    ``Exception``, which a batch job's per-video handler would take for a bad video."""


_MAIN_PID: list[int] = []


def _terminated(signum, frame) -> None:
    if os.getpid() not in _MAIN_PID:  # a forked DataLoader worker: it dies as it did before
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Commands that report some errors themselves read it too.
    args.debug = debug = args.debug or os.environ.get("SPOOL_DEBUG", "") not in ("", "0")
    from spool.errors import RankZeroStopped
    from spool.runtime import configure_logging, process_rank, tune_cpu_allocator

    configure_logging()
    tune_cpu_allocator()  # before the first large tensor (see its docstring)
    # Else SIGTERM kills silently (exit 143, no word of what was kept). spool train installs
    # its own handler for its run (a checkpoint first).
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        _MAIN_PID[:] = [os.getpid()]
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main else None
    kept = (f"; {RESUMABLE[args.command]}, and the same command goes on from there"
            if args.command in RESUMABLE else "")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # under torchrun every rank gets it: rank 0 says so
        if not process_rank():
            print(f"spool {args.command}: interrupted{kept}", file=sys.stderr)
        return 130
    except Terminated:
        if not process_rank():
            print(f"spool {args.command}: terminated (SIGTERM){kept}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # `spool eval ... | head`: the reader has what it wanted
        with contextlib.suppress(OSError, ValueError):  # stdout may have no descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else exit flushes
        return 128 + signal.SIGPIPE
    # User mistakes, unloadable inputs, and work refused up front for want of memory.
    except (ValueError, OSError, MemoryError) as err:
        if debug:
            raise
        rank = process_rank()
        if rank and isinstance(err, RankZeroStopped):
            return 2  # rank 0 says why
        print(f"spool {args.command}: error{f' (rank {rank})' if rank else ''}: "
              f"{one_line(err) or type(err).__name__}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if debug or not _peer_gone(err):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"spool {args.command}: error (rank {process_rank()}): a collective of the "
              f"torchrun job failed ({type(err).__name__}: {first}), most likely because "
              "another process of it is gone: its own output, and torchrun's summary, say "
              "which and why (--debug: the traceback)", file=sys.stderr)
        return 1
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


# What the transports say when the process at the other end is gone (gloo; NCCL's abort).
_PEER_GONE = ("closed by peer", "reset by peer", "Read error", "Broken pipe",
              "communicator was aborted")


def _peer_gone(err: RuntimeError) -> bool:
    """Whether ``err`` says that another process of the job is gone (gloo's "Connection closed
    by peer", in a collective or in DDP's backward pass), for one line instead of 40 of
    traceback; not a rendezvous that failed (a port in use) nor any other error."""
    import torch.distributed as dist

    if isinstance(err, (dist.DistNetworkError, dist.DistStoreError)):
        return False
    return any(words in str(err) for words in _PEER_GONE)


def one_line(err: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker, whose message torch
    replaced by the worker's whole traceback, the original message (its last line)."""
    name = getattr(err, "filename", None)
    if isinstance(err, FileExistsError) and name is not None and not os.path.isdir(name):
        what = ("a file" if os.path.isfile(name) else "a broken link" if os.path.islink(name)
                else "something other than a folder")
        return f"{name}: {what} is there where a folder is needed"
    if isinstance(err, NotADirectoryError) and name is not None:
        return f"{name}: a file in its path stands where a folder is needed"
    text = str(err)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]  # "module.ErrorName: message"
    name, sep, message = last.partition(": ")
    return message if sep and " " not in name else last


if __name__ == "__main__":
    sys.exit(main())
