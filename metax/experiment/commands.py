"""The `metax` commands that neither train a config nor read a run: `list` (the registry)
and `sweep` (a grid of small classifiers whose dynamics `metax.dynamics` logs)."""

import os

from metax.experiment.errors import ConfigError
from metax.experiment.signals import Interrupted


def command_list(args) -> int:
    from metax.experiment.registry import KINDS, load_plugin, registry

    for path in args.plugin:
        load_plugin(path)
    kinds = KINDS
    if args.kind is not None:
        kind = args.kind if args.kind.endswith("s") else args.kind + "s"
        if kind not in KINDS:
            from metax.experiment.errors import unknown_name

            raise unknown_name("kind", args.kind, KINDS)
        kinds = (kind,)
    for kind in kinds:
        print(kind)
        for entry in registry(kind).entries():
            origin = "" if entry.source == "metax" else f"  [{os.path.basename(entry.source)}]"
            print(f"  {entry.name:<18} {entry.description}{origin}")
    return 0


def command_sweep(args) -> int:
    from metax import dynamics
    from metax.experiment.schema import read_yaml

    data, _ = read_yaml(args.spec)
    try:
        spec = dynamics.SweepSpec.from_dict(data)
    except ValueError as error:
        raise ConfigError(f"{args.spec}: {error}") from error
    from metax.experiment.folders import check_output, is_sweep
    from metax.experiment.signals import StopRequests

    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.spec))[0])
    check_output(out, f"--out {out}", is_sweep, "a metax sweep")
    try:
        # Signals are noted and acted on between epochs, when no computation is in flight.
        with StopRequests() as stop:
            result = dynamics.run_sweep(spec, out, resume=args.resume, progress=not args.no_progress,
                                        on_epoch=lambda epoch: stop.check())
    except Interrupted as error:
        import shlex

        error.command = f"metax sweep {shlex.quote(args.spec)} --out {shlex.quote(out)} --resume"
        raise
    except FileExistsError as error:
        raise ConfigError(f"{error} Pass --resume to add the missing runs, or choose another --out.") from error
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"{args.spec}: {error}") from error
    print(f"{out}: trained {len(result.trained)} run(s), {len(result.skipped)} already there, in {result.seconds:.0f} s")
    return 0
