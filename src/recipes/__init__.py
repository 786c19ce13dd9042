"""The paper's Tables 2, 3 and 6 as runs of recipes/ (paper), and as tables beside the paper's own
numbers (tables); reproduce.py runs them."""
