"""labkit: a hands-on lab for real-time event delivery.

Events go from a sender over WebSocket to the producer service, into Kafka, out
through the consumer service and the gateway to every watcher. One settings
object, one event model and one client API serve the CLI, the notebooks, the
benchmark and the tests.
"""

from labkit.client import Sender, SendError, watch
from labkit.errors import LabkitError
from labkit.events import Ack, Delivered, Event
from labkit.ops.stack import Stack
from labkit.settings import Settings

__all__ = ["Ack", "Delivered", "Event", "LabkitError", "Sender", "SendError", "Settings", "Stack", "watch"]
__version__ = "0.1.0"
