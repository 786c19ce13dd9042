"""What the entry points (train.py, evaluate.py, predict.py, export.py, reproduce.py, demo.py) share:
config files (config_file), help text (help), user errors (errors), cheap checks before any model
loads (checks), timed phases (progress) and the CPU thread policy (threads)."""
