"""The next chunk of host-drawn tasks prepared on a thread while the device computes."""

import queue
import threading

_DONE = object()


class _Failed:
    def __init__(self, exc):
        self.exc = exc


def prefetch(iterable):
    """Yield the items of ``iterable``, producing the next one on a background thread.

    The queue holds one item, so at most one chunk waits beside the one in use.
    An exception of the producer is raised in the caller, at the item where it
    happened.  Closing the generator (an early stop, a ``KeyboardInterrupt``, a
    ``break``) stops the thread before returning.  Only worth it when the
    consumer works on an accelerator: on the CPU the thread would compete with
    the computation for the cores.

    Parameters
    ----------
    iterable : iterable

    Yields
    ------
    item
        The items of ``iterable``, in order.
    """
    items = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item):
        # Waits for room, but gives up when the consumer has gone.
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            put(_Failed(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="skreptile-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
