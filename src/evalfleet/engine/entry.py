"""A worker started under another Python (a stage's `python:`): `python -m evalfleet.engine.entry ADDRESS KEY`.

It dials the driver back on ADDRESS (a local socket, authenticated with KEY), reads its start arguments, and runs
the same worker loop as a spawned worker; its own environment's packages (transformers, ...) load the model.
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Client

from evalfleet.engine.worker import worker_main


def main() -> None:
    address, key = sys.argv[1], bytes.fromhex(sys.argv[2])
    conn = Client(address, family="AF_UNIX", authkey=key)
    spec, model_json, batch_size, output_dir = conn.recv()
    worker_main(conn, spec, model_json, batch_size, output_dir)


if __name__ == "__main__":
    main()
