"""Make `snakemake --profile slurm` and `--profile local` work by name.

Snakemake looks a profile name up in the current folder, then in the user's profile
folder (platformdirs' user config dir: $XDG_CONFIG_HOME/snakemake, else
~/.config/snakemake), then in the site's (/etc/xdg/snakemake). `link` puts a symbolic
link to this checkout's profiles/<name> in the user's folder, so profiles/ stays the
one source; `unlink` removes those links and nothing else; `status` says where
`--profile <name>` resolves from the current folder, as Snakemake resolves it. Run
with the interpreter that runs Snakemake (`make profiles`, `make unlink-profiles`).

`link` is idempotent. It never replaces a profile of the user's own (a folder, or a
link to somewhere else): it says so, and `--profile <name>` then keeps meaning that
one. A link left by another ragtrain checkout (moved or deleted included) is pointed
at this one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("slurm", "local")


def user_profile_dir() -> Path:
    """The folder Snakemake searches for profiles by name, as Snakemake computes it."""
    try:
        from snakemake.common import get_appdirs

        return Path(get_appdirs().user_config_dir)
    except ImportError:  # pragma: no cover - Snakemake moved it: ask platformdirs
        from platformdirs import user_config_dir

        return Path(user_config_dir("snakemake", "snakemake"))


def is_ragtrain_profile(target: Path, name: str) -> bool:
    """A link target that is (or was, if the checkout is gone) ragtrain's profiles/<name>."""
    if target.parts[-2:] != ("profiles", name):
        return False
    checkout = target.parents[1]
    pyproject = checkout / "pyproject.toml"
    if not checkout.exists():
        return True  # a deleted checkout's link
    return pyproject.is_file() and 'name = "ragtrain"' in pyproject.read_text()


def link(folder: Path, names: list[str]) -> int:
    for name in names:
        source, dest = ROOT / "profiles" / name, folder / name
        if dest.is_symlink():
            target = Path(os.readlink(dest))
            target = target if target.is_absolute() else dest.parent / target
            if dest.exists() and dest.resolve() == source.resolve():
                print(f"profiles: {dest} -> {source} (already linked)")
                continue
            if not is_ragtrain_profile(target, name):
                print(
                    f"profiles: WARNING: {dest} links to {target}, not ragtrain's: left as it "
                    f"is, so `--profile {name}` means that one. Use `--profile "
                    f"profiles/{name}` from the repository root, or remove it and run "
                    "`make profiles`.",
                    file=sys.stderr,
                )
                continue
            dest.unlink()
            dest.symlink_to(source, target_is_directory=True)
            print(f"profiles: {dest} -> {source} (was -> {target})")
        elif dest.exists():
            print(
                f"profiles: WARNING: {dest} is a profile of your own: left as it is, so "
                f"`--profile {name}` means that one. Use `--profile profiles/{name}` from "
                "the repository root, or move it away and run `make profiles`.",
                file=sys.stderr,
            )
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(source, target_is_directory=True)
            print(f"profiles: {dest} -> {source} (linked)")
    # A profile of the user's own is theirs to keep: warned about above, not an error.
    return 0


def unlink(folder: Path, names: list[str]) -> int:
    for name in names:
        source, dest = ROOT / "profiles" / name, folder / name
        if dest.is_symlink() and dest.exists() and dest.resolve() == source.resolve():
            dest.unlink()
            print(f"profiles: removed {dest}")
        elif dest.is_symlink() or dest.exists():
            print(f"profiles: {dest} is not a link to {source}: left as it is")
    return 0


def resolve(name: str) -> Path | None:
    """The folder `snakemake --profile <name>` would use, run from the current folder."""
    from snakemake.cli import get_profile_dir

    found = get_profile_dir(name)
    return found[0].resolve() if found else None


def status(folder: Path, names: list[str]) -> int:
    """Where `--profile <name>` resolves from here; exit 1 unless to this checkout's."""
    wrong = 0
    for name in names:
        source, dest = ROOT / "profiles" / name, folder / name
        found = resolve(name)
        if found == source.resolve():
            through = f" (through {dest})" if dest.resolve() == found else ""
            print(f"--profile {name}: {found}{through}")
            continue
        wrong += 1
        print(
            f"--profile {name}: {found or 'no profile found'}, not {source}: "
            "`make profiles` links it (README, Using the workflow)",
            file=sys.stderr,
        )
    return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["link", "unlink", "status"])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(NAMES)} (default: all)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="the profile folder (default: Snakemake's user profile folder)",
    )
    args = parser.parse_intermixed_args(argv)
    if unknown := set(args.names) - set(NAMES):
        parser.error(f"no profile {', '.join(sorted(unknown))} in profiles/ (only {NAMES})")
    args.names = args.names or list(NAMES)
    folder = args.dir or user_profile_dir()
    return {"link": link, "unlink": unlink, "status": status}[args.command](folder, args.names)


if __name__ == "__main__":
    sys.exit(main())
