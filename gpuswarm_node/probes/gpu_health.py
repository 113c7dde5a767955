"""GPU health from NVML, for `gpuswarm-node watch`: one cheap reading per round over a session
held open between rounds (nvmlInit can take seconds on a GPU without persistence mode).

Each call this reads is NVML's (nvml.h, as pynvml names it); a call the driver or library lacks
(NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED) reads as "not supported", never as a
fault:

- nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetUUID: the GPUs NVML answers for;
  NVML_ERROR_GPU_IS_LOST on a GPU's call is a GPU that fell off the bus.
- nvmlDeviceGetRetiredPagesPendingStatus: pages retired (dynamic page retirement, before Ampere)
  that take effect only after a reboot or driver reload.
- nvmlDeviceGetRemappedRows: (corrected, uncorrected, pending, failure); Ampere and newer. A
  pending remapping takes effect at the next GPU reset; a failure needs the GPU serviced.
- nvmlEventSetCreate, nvmlDeviceRegisterEvents(nvmlEventTypeXidCriticalError), nvmlEventSetWait:
  the Xid events since the session began, waited for at most `wait_ms` per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

XID_CRITICAL_ERROR = 0x8  # nvmlEventTypeXidCriticalError (nvml.h)
GPU_IS_LOST = 15  # NVML_ERROR_GPU_IS_LOST
MAX_EVENTS_PER_ROUND = 64


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML answered this round. None: NVML does not support the query here."""

    index: int
    uuid: str = ""
    lost: bool = False
    retired_pages_pending: bool | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    mig_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class NvmlReading:
    """What NVML said this round: `problem` (why it did not answer; then no GPUs), the GPUs, the
    Xid events seen since the session began as (GPU uuid, Xid), and whether Xid events are watched
    at all (False where NVML or the driver cannot deliver them)."""

    problem: str = ""
    gpus: tuple[GpuReading, ...] = ()
    xids: tuple[tuple[str, int], ...] = ()
    events: bool = False


def _code(exc) -> int:
    return int(getattr(exc, "value", 0) or 0)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class NvmlWatch:
    """An NVML session across rounds: `read()` once a round; `close()` at the end. A round in
    which NVML stops answering closes the session, and the next round opens a new one."""

    nvml: object = None  # the pynvml module (a stand-in in tests)
    _open: bool = False
    _events: object = None
    _handles: dict = field(default_factory=dict)  # address of a handle -> GPU uuid, for events
    _xids: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.nvml is None:
            import pynvml

            self.nvml = pynvml

    def _start(self) -> str:
        nv = self.nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            return f"NVML does not initialise ({exc})"
        self._open, self._events, self._handles = True, None, {}
        return ""

    def _register(self, handles: list) -> None:
        """Watch Xid events on every GPU that can report them (best effort)."""
        nv = self.nvml
        try:
            events = nv.nvmlEventSetCreate()
        except nv.NVMLError:
            return
        registered = 0
        for handle, uuid in handles:
            try:
                if not nv.nvmlDeviceGetSupportedEventTypes(handle) & XID_CRITICAL_ERROR:
                    continue
                nv.nvmlDeviceRegisterEvents(handle, XID_CRITICAL_ERROR, events)
                registered += 1
            except nv.NVMLError:
                continue
        if registered:
            self._events = events
        else:
            try:
                nv.nvmlEventSetFree(events)
            except nv.NVMLError:
                pass

    def read(self, wait_ms: int = 100) -> NvmlReading:
        nv = self.nvml
        if not self._open:
            problem = self._start()
            if problem:
                return NvmlReading(problem=problem)
            fresh = True
        else:
            fresh = False
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            self.close()
            return NvmlReading(problem=f"NVML does not answer nvmlDeviceGetCount ({exc})")
        gpus, handles = [], []
        for index in range(count):
            gpu, handle = self._gpu(index)
            gpus.append(gpu)
            if handle is not None:
                handles.append((handle, gpu.uuid))
        if fresh:
            self._register(handles)
        self._drain_events(wait_ms)
        return NvmlReading(gpus=tuple(gpus), xids=tuple(self._xids), events=self._events is not None)

    def _gpu(self, index: int):
        nv = self.nvml
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
        except nv.NVMLError as exc:
            return GpuReading(index, lost=_code(exc) == GPU_IS_LOST), None
        lost = False

        def ask(call, *args):
            nonlocal lost
            try:
                return getattr(nv, call)(*args)
            except nv.NVMLError as exc:
                lost = lost or _code(exc) == GPU_IS_LOST
                return None
            except AttributeError:  # a pynvml without the call
                return None

        pending = ask("nvmlDeviceGetRetiredPagesPendingStatus", handle)
        rows = ask("nvmlDeviceGetRemappedRows", handle)
        migs: list[str] = []
        mode = ask("nvmlDeviceGetMigMode", handle)
        if mode and mode[0] == 1:  # NVML_DEVICE_MIG_ENABLE
            for i in range(ask("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
                mig = ask("nvmlDeviceGetMigDeviceHandleByIndex", handle, i)
                if mig is not None:
                    mig_uuid = ask("nvmlDeviceGetUUID", mig)
                    if mig_uuid:
                        migs.append(_text(mig_uuid))
        self._handles[_address(handle)] = uuid
        return GpuReading(index, uuid, lost=lost,
                          retired_pages_pending=None if pending is None else bool(pending),
                          remap_pending=None if rows is None else bool(rows[2]),
                          remap_failure=None if rows is None else bool(rows[3]),
                          mig_uuids=tuple(migs)), handle

    def _drain_events(self, wait_ms: int) -> None:
        nv = self.nvml
        if self._events is None:
            return
        for n in range(MAX_EVENTS_PER_ROUND):
            try:
                # Wait only for the first: the rest are those already queued.
                data = nv.nvmlEventSetWait(self._events, wait_ms if n == 0 else 0)
            except nv.NVMLError:
                # NVML_ERROR_TIMEOUT: nothing (more) this round. Any other failure of the wait
                # says nothing about the GPUs; the other calls of the round do.
                return
            if int(data.eventType) & XID_CRITICAL_ERROR:
                uuid = self._handles.get(_address(data.device), "")
                self._xids.append((uuid, int(data.eventData)))

    def close(self) -> None:
        nv = self.nvml
        if self._events is not None:
            try:
                nv.nvmlEventSetFree(self._events)
            except nv.NVMLError:
                pass
        if self._open:
            try:
                nv.nvmlShutdown()
            except nv.NVMLError:
                pass
        self._open, self._events, self._handles = False, None, {}


def _address(handle) -> int:
    """The pointer value of an NVML handle (pynvml's ctypes pointer, or a test's stand-in)."""
    import ctypes

    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or 0
    except (TypeError, ctypes.ArgumentError):
        return id(handle)
