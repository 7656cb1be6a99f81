"""Examples of anacuda in use, run from the repository root (`python3 -m examples.demo`); not part
of the installed package."""
