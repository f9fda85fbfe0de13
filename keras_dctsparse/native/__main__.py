"""`python -m keras_dctsparse.native build`: compile the native kernels ahead of time."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_dctsparse.native",
        description="Build (or locate) the native CPU kernels of keras_dctsparse.",
    )
    parser.add_argument("command", choices=("build", "path"),
                        help="build: compile if needed and print the library path; "
                        "path: print where the library is or would be built")
    parser.add_argument("--force", action="store_true", help="rebuild even if built")
    args = parser.parse_args(argv)
    from keras_dctsparse.native import build

    try:
        if args.command == "path":
            print(build.library_path())
            return 0
        print(build.build(force=args.force))
    except build.BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
