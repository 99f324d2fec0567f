"""``python -m labkit.ops.kafka``: fetch Apache Kafka's jars now (``make init`` and ``make test`` run it), and say
where they are."""

from __future__ import annotations

import sys

from labkit.errors import LabkitError
from labkit.ops.kafka import find_jars, find_java
from labkit.settings import Settings


def main() -> int:
    settings = Settings()
    try:
        java = find_java()
        jars = find_jars(settings.kafka_home, settings.kafka_mirror, lambda text: print(text, file=sys.stderr))
    except LabkitError as exc:
        print(f"Apache Kafka cannot run here: {exc}", file=sys.stderr)
        return 1
    print(f"Apache Kafka {jars.version}: jars in {jars.libs} ({jars.source}); {java.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
