"""Prepares `.device-carry/` here: what the bare GPU machine lacks to run the service.

    python bench/device/prepare.py            (from the repository root; `make device-carry`)

The GPU machine has no network; each call to it carries the repository and up to 64 MiB
in all. This script puts into `.device-carry/` (ignored by git):

- `wheels/`: the wheels of bench/device/wheels.txt for CPython 3.12 on manylinux x86-64,
  downloaded with `pip download --no-deps`, one version each;
- `gen/python/`: the protobuf stubs (`make stubs` output; they are generated code for the
  protobuf 4.25 runtime and run on newer runtimes too: 4.25 here, 7.36 checked);
- `programs.tar.xz`: Debian's nginx and redis-server programs (`sbin/`), unpacked from
  their .debs (`dpkg -x`) with every shared library they link beyond glibc and the C++
  runtime (`lib/`: found with `ldd`, taken from those libraries' own .debs), and `bin/`
  wrappers that run them on the carried libraries; xz-compressed, as unpacked they would
  not fit in one call beside the wheels;
- `manifest.json`: what is in it, with versions and sizes.

It ends with the size the device call would carry (tracked and untracked files of the
repository plus this folder) against the 64 MiB limit. bench/device/install.sh installs
the folder on the device.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS_FILE = Path(__file__).with_name("wheels.txt")
CALL_LIMIT_BYTES = 64 * 1024 * 1024
PROGRAMS_ARCHIVE = "programs.tar.xz"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# name on the device -> (Debian package, file in it). Debian's redis-server package holds only
# a link to redis-tools' redis-check-rdb (and service files): that binary runs as the server
# when called by any other name.
PROGRAMS = {
    "nginx": ("nginx", "usr/sbin/nginx"),
    "redis-server": ("redis-tools", "usr/bin/redis-check-rdb"),
}
# Present on every glibc system (the device's too): never carried.
SYSTEM_LIBRARIES = {"linux-vdso.so.1", "ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6",
                    "libpthread.so.0", "libdl.so.2", "librt.so.1", "libstdc++.so.6", "libgcc_s.so.1"}
WRAPPER = """#!/bin/sh
# Debian's {name}, run on the libraries carried beside it (bench/device/prepare.py).
here=$(dirname "$(readlink -f "$0")")/..
export LD_LIBRARY_PATH="$here/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
exec "$here/sbin/{name}" "$@"
"""


def run(*command: str | Path, cwd: Path | None = None) -> str:
    """Runs a command; its stdout, or SystemExit with what it printed when it fails."""
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=cwd,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"prepare: {' '.join(map(str, command))} failed:\n{done.stderr or done.stdout}")
    return done.stdout


def requirements() -> list[str]:
    """NAME==VERSION lines of wheels.txt."""
    lines = [line.split("#", 1)[0].strip() for line in WHEELS_FILE.read_text().splitlines()]
    return [line for line in lines if line]


def download_wheels(folder: Path, python_version: str) -> list[Path]:
    """The pinned wheels for CPython `python_version` on manylinux x86-64, one version each."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    platform_flags = [flag for tag in PLATFORMS for flag in ("--platform", tag)]
    run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp", *platform_flags,
        "-d", folder, *requirements())
    wheels = sorted(folder.glob("*.whl"))
    names = [re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower() for wheel in wheels]
    if len(set(names)) != len(names) or len(wheels) != len(requirements()):
        raise SystemExit(f"prepare: expected one wheel per line of {WHEELS_FILE.name}, got {names}")
    return wheels


def debian_package_of(library: Path) -> str:
    """The installed Debian package that holds `library` (merged /usr or not)."""
    named = {library, library.resolve()}
    merged = {Path(str(p).removeprefix("/usr")) if str(p).startswith("/usr/") else Path(f"/usr{p}") for p in named}
    for path in named | merged:
        done = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.split(":", 1)[0].strip()
    raise SystemExit(f"prepare: no installed Debian package holds {library}")


def linked_libraries(binary: Path) -> dict[str, Path]:
    """soname -> the path it resolves to here, for every library `binary` needs beyond glibc."""
    libraries = {}
    for line in run("ldd", binary).splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if not arrow or name in SYSTEM_LIBRARIES:
            continue
        if rest.startswith("not found"):
            raise SystemExit(f"prepare: {binary.name} needs {name}, which is not installed here")
        libraries[name] = Path(rest.split(" (", 1)[0])
    return libraries


def unpack(packages: set[str], download: Path, root: Path) -> dict[str, str]:
    """Downloads the .debs of `packages` and unpacks them under `root`; {package: version}."""
    run("apt-get", "download", *sorted(packages), cwd=download)
    versions = {}
    for deb in sorted(download.glob("*.deb")):
        name, version = run("dpkg-deb", "-f", deb, "Package", "Version").split("\n")[:2]
        versions[name.split(": ", 1)[1]] = version.split(": ", 1)[1]
        run("dpkg-deb", "-x", deb, root)
        deb.unlink()
    return versions


def find_unpacked(root: Path, soname: str) -> Path:
    matches = [path for path in root.rglob(soname) if path.exists()]
    if not matches:
        raise SystemExit(f"prepare: {soname} is not in the unpacked packages")
    return matches[0].resolve()


def build_programs(folder: Path) -> dict[str, object]:
    """Debian's nginx and redis-server with their libraries into `folder`/sbin, lib and bin."""
    for part in ("sbin", "lib", "bin"):
        (folder / part).mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        download, root = Path(scratch) / "debs", Path(scratch) / "root"
        download.mkdir()
        versions = unpack({package for package, _ in PROGRAMS.values()}, download, root)
        libraries: dict[str, Path] = {}
        for name, (_, inside) in PROGRAMS.items():
            shutil.copy2(root / inside, folder / "sbin" / name)
            libraries |= linked_libraries(root / inside)
        versions |= unpack({debian_package_of(path) for path in libraries.values()}, download, root)
        for soname in libraries:
            shutil.copy2(find_unpacked(root, soname), folder / "lib" / soname)
    for name in PROGRAMS:
        wrapper = folder / "bin" / name
        wrapper.write_text(WRAPPER.format(name=name))
        wrapper.chmod(0o755)
    for command in ((folder / "bin" / "nginx", "-v"), (folder / "bin" / "redis-server", "--version")):
        done = subprocess.run(command, capture_output=True, text=True, check=True)  # nginx -v: stderr
        print(f"carried {command[0].name}: {(done.stdout + done.stderr).strip()}")
    return {"debian_packages": versions, "libraries": sorted(libraries),
            "programs_bytes": folder_bytes(folder)}


def carry_programs(carry: Path) -> dict[str, object]:
    """The programs as `programs.tar.xz` (a third of their size; install.sh unpacks it)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "programs"
        described = build_programs(folder)
        with tarfile.open(carry / PROGRAMS_ARCHIVE, "w:xz", preset=9) as archive:
            for part in ("bin", "sbin", "lib"):
                archive.add(folder / part, arcname=part)
    return described


def carry_stubs(carry: Path) -> None:
    """The generated protobuf stubs (`make stubs`), checked to be newer than the contract."""
    stubs = REPO / "gen" / "python"
    contract = REPO / "proto" / "avatar" / "v1" / "avatar.proto"
    generated = stubs / "avatar" / "v1" / "avatar_pb2.py"
    if not generated.exists() or generated.stat().st_mtime < contract.stat().st_mtime:
        raise SystemExit("prepare: gen/python is missing or older than the .proto: run `make stubs` first")
    shutil.rmtree(carry / "gen", ignore_errors=True)
    shutil.copytree(stubs, carry / "gen" / "python", ignore=shutil.ignore_patterns("__pycache__"))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def repository_bytes() -> int:
    """Tracked and untracked-not-ignored files: what a device call sends besides `carry`."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO)
    return sum((REPO / name).stat().st_size for name in set(listed.split("\0"))
               if name and (REPO / name).is_file() and not (REPO / name).is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carry", type=Path, default=REPO / ".device-carry", help="the folder to fill")
    parser.add_argument("--python-version", default="3.12", help="the device's Python (wheels' tag)")
    args = parser.parse_args(argv)
    carry: Path = args.carry
    carry.mkdir(exist_ok=True)
    wheels = download_wheels(carry / "wheels", args.python_version)
    programs = carry_programs(carry)
    carry_stubs(carry)
    carried, repository = folder_bytes(carry), repository_bytes()
    manifest = {
        "python_version": args.python_version,
        "wheels": {wheel.name: wheel.stat().st_size for wheel in wheels},
        **programs,
        "carry_bytes": carried,
        "repository_bytes": repository,
        "call_bytes": carried + repository,
        "call_limit_bytes": CALL_LIMIT_BYTES,
    }
    (carry / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    mib = 1024 * 1024
    print(f"{carry}: {len(wheels)} wheels {folder_bytes(carry / 'wheels') / mib:.1f} MiB, programs and "
          f"libraries {(carry / PROGRAMS_ARCHIVE).stat().st_size / mib:.1f} MiB "
          f"({programs['programs_bytes'] / mib:.1f} MiB unpacked), {carried / mib:.1f} MiB in all")
    print(f"device call: repository {repository / mib:.1f} MiB + carry {carried / mib:.1f} MiB = "
          f"{(carried + repository) / mib:.1f} MiB of {CALL_LIMIT_BYTES / mib:.0f} MiB")
    if carried + repository > CALL_LIMIT_BYTES:
        print("prepare: too large for one device call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
