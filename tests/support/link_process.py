"""A separate process holding one MqttLink, so tests can SIGKILL a real client. Prints READY when connected."""

from __future__ import annotations

import argparse
import time

from runtime.mqtt import MqttLink
from schemas.config import BrokerConfig
from schemas.messages import Role


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--edge-id", required=True)
    args = parser.parse_args()
    config = BrokerConfig(port=args.port, topic_prefix=args.prefix, keepalive_s=5)
    link = MqttLink(config, role=Role.EDGE, node_id=args.edge_id, software_version="test")
    link.start()
    link.wait_connected(10)
    print("READY", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
