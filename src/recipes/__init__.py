"""The paper's Tables 2, 3 and 6 as runs of recipes/, and as tables beside the paper's own numbers
(paper.py); reproduce.py runs them."""
