"""A sending process with its own TransferOutbox, so tests can SIGKILL it mid-transfer and start it again.

Prints ``SENT <index>`` per acknowledged chunk and ``DONE <state>`` when the receiver's verdict arrives.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from edge.db import open_edge_database
from runtime.exchange import TransferOutbox
from runtime.mqtt import MqttLink
from schemas.config import BrokerConfig
from schemas.messages import Role, TransferStatusMessage


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--edge-id", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--transfer-id", required=True)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()

    config = BrokerConfig(port=args.port, topic_prefix=args.prefix, chunk_size_bytes=65536, keepalive_s=5)
    link = MqttLink(config, role=Role.EDGE, node_id=args.edge_id)
    outbox = TransferOutbox(
        link,
        open_edge_database(args.state_dir / "outbox.db"),
        args.state_dir / "spool",
        window=2,  # acknowledgements (and SENT lines) follow the publishes closely
        chunk_delay_s=args.chunk_delay,
        on_chunk_sent=lambda tid, index: print(f"SENT {index}", flush=True),
    )
    link.subscribe(
        link.topics.edge_update_statuses(args.edge_id), outbox.handle_status, message_type=TransferStatusMessage
    )
    link.start()
    link.wait_connected(10)
    if outbox.record(args.transfer_id) is None:
        copy = args.state_dir / "to-send.artifact"
        shutil.copyfile(args.artifact, copy)
        outbox.submit(copy, args.transfer_id, link.topics.edge_update(args.edge_id, args.transfer_id))
    outbox.start()
    record = outbox.wait_finished(args.transfer_id, timeout=120)
    print(f"DONE {record.state.value}", flush=True)
    outbox.stop()
    link.stop()


if __name__ == "__main__":
    main()
