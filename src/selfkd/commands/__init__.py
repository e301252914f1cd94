"""The command-line commands, one module each: ``register(subparsers)`` adds its parser (with ``func=run``), and
``run(args)`` calls the library. Nothing here imports torch at module level, so ``selfkd --help`` and argument
errors answer at once."""
from . import bench, compare, demo, evaluate, export, listing, sweep, train, tune

# In the order `selfkd --help` lists them.
COMMANDS = (train, evaluate, listing, compare, sweep, tune, demo, bench, export)
