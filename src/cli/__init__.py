"""What the entry points (train.py, evaluate.py, predict.py, export.py, reproduce.py, demo.py) share:
config files (config_file), help text (help), running a main() with one-line user errors (errors),
the numeric flag type (checks) and the CPU thread policy (threads). The checks before a model loads
and the phase lines are library code, in src/checks.py."""
