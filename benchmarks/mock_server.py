"""Run the calibration mock (the package benchmarks/mockserver/ says what it is and does).

    python benchmarks/mock_server.py --port 8123 --ttft-ms 50 --itl-ms 10 --processes 4
    python benchmarks/mock_server.py -- mls bench run {url} -c 1,128 -n 256   # mock, run, stop
    python benchmarks/mock_server.py --fault reset=3 --fault split=2 --cold-s 5

Tests and benchmark scripts start it with `MockProcess` (benchmarks/mockserver/process.py).
"""

from __future__ import annotations

from mockserver.serve import main

if __name__ == "__main__":
    main()
