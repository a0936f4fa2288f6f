"""A publisher in a process of its own, for the kill -9 test: publishes the outbox of the
database at argv[1] to the broker argv[2], address argv[3], until killed."""

from __future__ import annotations

import sys
import time

from app.core.config import Settings
from app.records import make_engine
from app.records.outbox import Outbox
from app.services.cfx_publisher import AmqpTarget, CfxPublisher


def main() -> None:
    url, broker, address = sys.argv[1:4]
    settings = Settings(cfx_broker_url=broker, cfx_address=address)
    # Small batches: the test kills this process while batches are in flight.
    publisher = CfxPublisher(Outbox(make_engine(url)), AmqpTarget.from_settings(settings),
                             batch=20)
    publisher.start()
    print("publishing", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
