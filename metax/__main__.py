"""`python -m metax ...` is the `metax` command."""

import sys

if __name__ == "__main__":
    try:
        from metax.experiment.cli import main
    except KeyboardInterrupt:  # Ctrl-C while JAX imports: nothing started, nothing to resume
        print("metax: stopped by SIGINT while starting; nothing was written.", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
