"""`avatar-checkpoints`: write stand-in Ditto checkpoints, or check a checkpoints folder before serving."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avatar_server.core.errors import AvatarError


def _standin(args: argparse.Namespace) -> int:
    from avatar_server.renderers.ditto.standin import write_standin

    files = write_standin(args.dir, args.size, seed=args.seed, onnx=not args.no_onnx)
    print(f"wrote {len(files)} stand-in files ({args.size}) under {args.dir}")
    print("These are RANDOM weights: the avatar renders as noise."
          + (" Tiny shapes are NOT the official shapes." if args.size == "tiny" else ""))
    return 0


def _check(args: argparse.Namespace) -> int:
    from avatar_server.renderers.ditto.checkpoints import registration_aux_files
    from avatar_server.renderers.ditto.models import load_ditto_config, load_networks

    config = load_ditto_config(args.dir)
    aux = registration_aux_files(args.dir)
    networks = load_networks(args.dir, runtime=args.runtime, device=args.device)
    for model in networks.describe():
        print(f"{model.name}: {model.runtime} on {model.device} ({model.precision})")
    print(f"sizes: {networks.sizes}")
    print(f"config: {config.source} (online_mode={config.online_mode}, sampling_timesteps={config.sampling_timesteps})")
    print("registration: " + ("release face models " + ", ".join(aux) if aux else "mediapipe 478 landmarks (no face models)"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avatar-checkpoints", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    standin = commands.add_parser("standin", help="write a stand-in checkpoints tree (random weights)")
    standin.add_argument("--size", choices=("tiny", "full"), default="tiny",
                         help="tiny: small CPU stand-ins; full: official tensor shapes (GPU benchmarks)")
    standin.add_argument("--seed", type=int, default=0)
    standin.add_argument("--no-onnx", action="store_true", help="write only the .pth files, cfgs and HuBERT")
    standin.add_argument("dir", type=Path)
    standin.set_defaults(run=_standin)
    check = commands.add_parser("check", help="load every network of a checkpoints folder with one runtime")
    check.add_argument("--runtime", choices=("pytorch", "onnx", "tensorrt"), default="pytorch")
    check.add_argument("--device", default="auto")
    check.add_argument("dir", type=Path)
    check.set_defaults(run=_check)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except AvatarError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
