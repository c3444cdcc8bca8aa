"""Load-test CLI (workloads, open/closed loop, TTFT/TPOT/ITL/E2E, goodput, reports, plots).

Talks to any OpenAI-compatible base URL and imports no server code. Built by the load-test
issue; the package exists so the layout in ARCHITECTURE.md holds from the start.
"""
