"""`python -m bench`: every benchmark (see bench.run_all)."""

from bench.run_all import main

main()
