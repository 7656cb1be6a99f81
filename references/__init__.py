"""Research tooling that is not part of the installed anacuda package (setup.py ships anacuda
and anacuda.* only): run it from the repository root, e.g. `python3 -m references.experiments`."""
