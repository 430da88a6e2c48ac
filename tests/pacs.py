"""A real test PACS: Debian's Orthanc (1.10.1, /usr/sbin/Orthanc) as a root-less process of the test,
for the exchange's PACS work (issue 17: C-FIND, C-MOVE/C-GET from the PACS, C-STORE into it).

    with OrthancPacs(modalities={"exchange": ("EXCHANGE", "127.0.0.1", port)}) as pacs:
        study = pacs.add_study(tmp_path / "a", instances=3, accession="ACC1", patient_id="PAT1")
        ...  # C-ECHO/C-FIND/C-MOVE/C-GET/C-STORE to 127.0.0.1:pacs.dicom_port, called AE pacs.aet

`OrthancPacs(aet="TESTPACS", modalities=None, *, config=None, start_timeout=10.0, stop_timeout=10.0)`
is a context manager (or `start()`/`stop()`). It writes `orthanc.json` into a fresh temporary
directory (`pacs.directory`, removed by `stop()`) with its own storage and SQLite index there and
starts `/usr/sbin/Orthanc --logfile=<directory>/orthanc.log <directory>/orthanc.json` (never the
systemd service). `pacs.log()` is that log; every error of this module carries it.

- Ports: `pacs.dicom_port` and `pacs.http_port` are found free by the kernel and each held, while the
  PACS runs, by an flock on a file named by the port in `PORT_LOCKS` (`PortReservation`): pytest-xdist
  workers (or any two tests on this machine) never pick the same one. A port taken by something else
  between that choice and Orthanc's bind makes Orthanc exit ("already in use"), or another server
  answers `/system` under a name not ours: then new ports, up to 5 attempts.
- Orthanc 1.10 has no bind-address option for either port: both listen on every address (0.0.0.0),
  so the ports are probed there. HTTP: `RemoteAccessAllowed` false, so any client not on loopback
  gets 401 whatever it sends; on loopback it needs the generated user (`AuthenticationEnabled`
  true, `RegisteredUsers`): the test hosts share this machine's loopback, and what the exchange does
  must go through DICOM, never this REST API. DICOM: refused to any AE not in `modalities` (below).
  That every address is open is also what lets a test host in a network namespace of its own reach
  the PACS at its 198.18.x.1.
- DICOM: `DicomAet` `aet`; `DicomCheckCalledAet` true; `DicomAlwaysAllowEcho/Store/Find/
  FindWorklist/Get/Move` all false and `DicomCheckModalityHost` true: only a calling AE title in
  `DicomModalities`, from the host given there (an IP address: Orthanc compares it with the peer's),
  gets an association. `modalities` maps a name to (AE title, host, port), or to Orthanc's object
  form ({"AET", "Host", "Port", "AllowFind": False, ...}; every Allow* defaults to true, C-GET
  included). Such an entry is what may query and retrieve, and what a C-MOVE may name as its
  destination (Orthanc opens the association to its host and port). `set_modality()` and
  `remove_modality()` change them at runtime (REST PUT/DELETE /modalities/{name}; new associations
  see the change at once).
- Other settings: no plugins, no Orthanc Explorer, no WebDAV, `MaximumStorageCacheSize` 0 (every read
  hits the storage directory: see `break_instance`), `DicomScuTimeout` 5 s (Orthanc's own
  associations, to a C-MOVE destination), `SaveJobs` and `SyncStorageArea` false, `DeidentifyLogs`
  false (the log shows the queries). `config` adds or overrides any key.
- Start: ready when `/system` answers with this instance's generated `Name` (about 0.1 to 0.3 s).
  Stop: SIGTERM, SIGKILL after `stop_timeout`; Orthanc 1.10.1 takes about 3.5 s to stop cleanly
  (its HTTP and DICOM servers' poll intervals), so share one per test module. If the test process
  dies without `stop()`, Orthanc gets SIGTERM (PR_SET_PDEATHSIG: that is when the thread that
  started it ends, so start and stop it from the same, long-lived thread, as a pytest fixture does)
  and the next start removes the directory left behind (`reap_stale_directories`).

REST helpers (httpx, `pacs.http` is the authenticated client on `pacs.url`): `upload(paths)` (POST
/instances for each file, returns Orthanc's instance ids in order), `add_study(directory, ...)`
(makes a synthetic CT study with tests/dicom_synth.ct_study and uploads it, returns a `Study`),
`studies()` (expanded), `study_instances(study_id)`, `find_studies(**main_tags)`, `count()`
(instances stored), `delete_instance(id)`, `set_modality()`, `remove_modality()`.

Studies: `add_study(..., accession=, patient_id=, study_date=, **attributes)`: AccessionNumber,
PatientID, StudyDate and any other attribute by keyword (SeriesDescription, PatientName,
StudyDescription, ...) on every instance. Each call is a new study (new StudyInstanceUID), so two
studies of one accession number or of one patient are two calls with the same values. C-FIND answers
study level from Orthanc's index: NumberOfStudyRelatedInstances etc. are computed.

Faults (each Orthanc 1.10.1's own behaviour, as tests/unit/test_test_pacs.py asserts it):

1. `break_instance(instance_id)`: removes that instance's attachment file from the storage directory
   (found by GET /instances/{id}/attachments/dicom/info, `<storage>/<uuid[0:2]>/<uuid[2:4]>/<uuid>`).
   The index still has it: C-FIND still counts it (NumberOfStudyRelatedInstances unchanged). A C-MOVE
   or C-GET of its study is aborted when Orthanc reaches it ("IMoveRequestHandler Failed: The
   specified path does not point to a regular file"): the instances sent before it arrive (pending
   responses 0xFF00), the final response is 0xC000 (Failed: unable to process) with no remaining
   count, and the rest are never sent. Failed Sub-operations stays 0; C-MOVE's final response says
   Completed 0 whatever was sent, C-GET's the number sent. Orthanc 1.10.1 sends a study's instances
   in the reverse of their upload order (`sending_order(study)`, as the tests assert), so breaking
   the first uploaded one gets every other one delivered before the failure.
2. `refuse_store(**match)`: a C-STORE of an instance whose attribute (by keyword) equals one of the
   values, e.g. `refuse_store(SOPInstanceUID=[uid])` or `refuse_store(SeriesDescription=["X"])`, is
   answered 0xA700 (Refused: out of resources) and not stored. How: a Lua `ReceivedInstanceFilter`
   (config `LuaScripts`) reads the rules file afresh for each instance received over DICOM and raises
   a Lua error for a match; Orthanc's C-STORE SCP answers an exception in the filter with 0xA700.
   `drop_store(**match)`: the filter returns false: Orthanc answers 0x0000 (success) and does not
   store it (its documented "backward compatible" answer for a filtered instance). Called without
   arguments, each clears its rules. REST uploads are never filtered. (Orthanc 1.10.1's
   `ReceivedCStoreInstanceFilter`, meant to return a C-STORE status, cannot: its integer result is
   cast to a bool, so 0 drops the instance with success and anything else stores it.)
3. Our AE unknown: an association from a calling AE title not in `modalities`, or from another host
   than its entry's, is rejected: A-ASSOCIATE-RJ result 1 (rejected permanent), source 1 (service
   user), reason 3 (calling AE title not recognised). A wrong called AE title: the same with reason
   7. An entry with "AllowFind"/"AllowMove"/"AllowGet"/"AllowEcho" false: the association is
   accepted, but such a request is answered with an A-ABORT (source 0, DUL service user), no status.
   A C-MOVE naming a destination AE title not in `modalities`: final status 0xC000 (Failed: unable
   to process; "Unknown modality for AET"), not 0xA801 (Move destination unknown), Completed,
   Failed and Warning 0. A registered destination where nothing listens: the same 0xC000.
   (pynetdicom 3.0.4, not Orthanc: about one in a hundred of these immediate rejections comes back
   `is_aborted` instead of `is_rejected`, without `acceptor.primitive`; its DUL thread did receive
   the A-ASSOCIATE-RJ, which an `evt.EVT_PDU_RECV` handler sees every time.)
4. PACS down: `no_listener()` gives a port on 127.0.0.1 held bound but not listening: a connection is
   refused at once (pynetdicom: not established, `is_aborted`). `pacs.paused()` stops the Orthanc
   process (SIGSTOP) for its block: the kernel still accepts the TCP connection but nothing answers
   (the association request times out on the client's ACSE timeout), then resumes it (SIGCONT).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydicom import dcmread

from tests.dicom_synth import ct_study

ORTHANC = "/usr/sbin/Orthanc"
HOST = "127.0.0.1"
PORT_LOCKS = Path(tempfile.gettempdir()) / "imaging-exchange-test-ports"
DIRECTORY_PREFIX = "imaging-exchange-pacs-"
START_ATTEMPTS = 5

# Orthanc's C-STORE filter (config "LuaScripts"); RULES, the rules file's path, is set before it.
FILTER_LUA = """\
-- Written by tests/pacs.py. The rules file is read afresh for every instance received by C-STORE
-- (never for a REST upload): "refuse" raises a Lua error (Orthanc answers 0xA700, not stored),
-- "drop" returns false (Orthanc answers 0x0000 and does not store it).
function Matches(dicom, match)
  for keyword, values in pairs(match or {}) do
    for _, value in ipairs(values) do
      if dicom[keyword] == value then
        return true
      end
    end
  end
  return false
end

function ReceivedInstanceFilter(dicom, origin, info)
  if origin["RequestOrigin"] ~= "DicomProtocol" then
    return true
  end
  local file = io.open(RULES, "r")
  if file == nil then
    return true
  end
  local rules = ParseJson(file:read("*a"))
  file:close()
  if Matches(dicom, rules["refuse"]) then
    error("test PACS refuses " .. dicom["SOPInstanceUID"])
  end
  if Matches(dicom, rules["drop"]) then
    print("test PACS drops " .. dicom["SOPInstanceUID"])
    return false
  end
  return true
end
"""


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed; the message carries what Orthanc said."""


class PortReservation:
    """A TCP port free on every address that no other test on this machine takes while we hold it:
    an flock of ours on `PORT_LOCKS/<port>`, released by `release()` or by our death."""

    def __init__(self) -> None:
        PORT_LOCKS.mkdir(mode=0o1777, exist_ok=True)
        while True:
            with socket.socket() as probe:
                probe.bind(("0.0.0.0", 0))  # Orthanc listens on every address: free there
                port = probe.getsockname()[1]
            lock = os.open(PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another test holds it (and has it, or is about to bind it)
                os.close(lock)
                continue
            self.port: int = port
            self._lock: int | None = lock
            return

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


@contextmanager
def no_listener() -> Iterator[int]:
    """A port on 127.0.0.1 where nothing listens ("PACS down"): held bound, never listening, so that
    nothing else can listen there while the block runs; a connection to it is refused at once."""
    with socket.socket() as held:
        held.bind((HOST, 0))
        yield held.getsockname()[1]


@dataclass(frozen=True)
class Study:
    """A study uploaded by `OrthancPacs.add_study`; lists in upload order."""

    uid: str  # StudyInstanceUID
    orthanc_id: str
    accession: str
    patient_id: str
    paths: list[Path]
    instances: list[str]  # Orthanc's instance ids
    sop_instance_uids: list[str]


def _values(match: Mapping[str, Iterable[str] | str]) -> dict[str, list[str]]:
    return {keyword: [values] if isinstance(values, str) else list(values) for keyword, values in match.items()}


def reap_stale_directories() -> list[Path]:
    """Remove the directories of test PACSes whose test process died without `stop()` (SIGKILL, or
    SIGTERM without a handler: Orthanc itself then got SIGTERM from PR_SET_PDEATHSIG). Each running
    PACS holds an flock on its directory's `owner.lock`; a directory without that file is never ours."""
    reaped = []
    for directory in Path(tempfile.gettempdir()).glob(DIRECTORY_PREFIX + "*"):
        try:
            lock = os.open(directory / "owner.lock", os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its owner runs
        else:
            shutil.rmtree(directory, ignore_errors=True)
            reaped.append(directory)
        finally:
            os.close(lock)
    return reaped


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class OrthancPacs:
    """Debian's Orthanc on loopback for one test module (see the module's docstring)."""

    def __init__(
        self,
        aet: str = "TESTPACS",
        modalities: Mapping[str, tuple[str, str, int] | Mapping[str, object]] | None = None,
        *,
        config: Mapping[str, object] | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.aet = aet
        self.host = HOST
        self.modalities = dict(modalities or {})
        self.extra_config = dict(config or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.directory: Path | None = None
        self.dicom_port = self.http_port = 0
        self.url = self.name = ""
        self.http: httpx.Client | None = None
        self._process: subprocess.Popen | None = None
        self._ports: list[PortReservation] = []
        self._owner: int | None = None

    # -- life cycle

    def __enter__(self) -> OrthancPacs:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        return self.directory / "orthanc.log"

    @property
    def storage(self) -> Path:
        return self.directory / "storage"

    @property
    def rules_path(self) -> Path:
        return self.directory / "store-rules.json"

    def log(self) -> str:
        """Orthanc's log so far ("" before it has one)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def start(self) -> OrthancPacs:
        reap_stale_directories()
        self.directory = Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX))
        self._owner = os.open(self.directory / "owner.lock.new", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._owner, fcntl.LOCK_EX)
        os.rename(self.directory / "owner.lock.new", self.directory / "owner.lock")  # appears locked
        try:
            for _ in range(START_ATTEMPTS):
                if self._start_once():
                    return self
            raise OrthancError(f"Orthanc found its ports taken {START_ATTEMPTS} times; its last log:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def _config(self, user: str, password: str) -> dict:
        return {
            "Name": self.name,
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "TemporaryDirectory": str(self.directory),
            "Plugins": [],
            "LuaScripts": [str(self.directory / "filter.lua")],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {user: password},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": {
                name: list(entry) if isinstance(entry, tuple | list) else dict(entry)
                for name, entry in self.modalities.items()
            },
            "DicomScuTimeout": 5,
            "MaximumStorageCacheSize": 0,
            "SyncStorageArea": False,
            "SaveJobs": False,
            "DeidentifyLogs": False,
            "MetricsEnabled": False,
            **self.extra_config,
        }

    def _start_once(self) -> bool:
        """Start Orthanc on new ports: True when it answers, False when a port was taken."""
        self._release_ports()
        self._ports = [PortReservation(), PortReservation()]
        self.dicom_port, self.http_port = (reservation.port for reservation in self._ports)
        self.url = f"http://{HOST}:{self.http_port}"
        self.name = f"test-pacs-{secrets.token_hex(6)}"
        user, password = "test", secrets.token_urlsafe(24)
        shutil.rmtree(self.storage, ignore_errors=True)
        self.storage.mkdir()
        (self.directory / "filter.lua").write_text(f"RULES = {json.dumps(str(self.rules_path))}\n{FILTER_LUA}")
        (self.directory / "orthanc.json").write_text(json.dumps(self._config(user, password), indent=2))
        self.log_path.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [ORTHANC, f"--logfile={self.log_path}", str(self.directory / "orthanc.json")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.http = httpx.Client(base_url=self.url, auth=(user, password), timeout=30)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                if "already in use" in self.log():
                    self._terminate()
                    return False
                raise OrthancError(f"Orthanc exited with {self._process.returncode}; its log:\n{self.log()}")
            try:
                system = self.http.get("/system", timeout=1).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.02)
                continue
            if system.get("Name") != self.name:  # another server has our HTTP port
                self._terminate()
                return False
            return True
        raise OrthancError(f"Orthanc did not answer within {self.start_timeout} s; its log:\n{self.log()}")

    def _terminate(self) -> None:
        if self.http:
            self.http.close()
            self.http = None
        process, self._process = self._process, None
        if process and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # if paused(): a stopped process leaves SIGTERM pending
            process.terminate()
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _release_ports(self) -> None:
        for reservation in self._ports:
            reservation.release()
        self._ports = []

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after `stop_timeout`), free the ports, remove the
        directory. Safe to call twice."""
        self._terminate()
        self._release_ports()
        if self.directory and self.directory.exists():
            shutil.rmtree(self.directory)
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Orthanc stopped (SIGSTOP) for the block: connections are accepted by the kernel, nothing
        answers them. Resumed (SIGCONT) after, also when the block fails."""
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            if self._process:
                self._process.send_signal(signal.SIGCONT)

    # -- REST

    def _call(self, method: str, path: str, **kwargs):
        response = self.http.request(method, path, **kwargs)
        if response.is_error:
            raise OrthancError(f"{method} {path}: {response.status_code} {response.text}\nOrthanc's log:\n{self.log()}")
        return response.json() if response.content else None

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """POST each file to /instances; Orthanc's instance ids, in the order of `paths`."""
        return [self._call("POST", "/instances", content=Path(path).read_bytes())["ID"] for path in paths]

    def add_study(
        self,
        directory: Path,
        instances: int = 2,
        series: int = 1,
        *,
        accession: str = "ACC0001",
        patient_id: str = "SYN0001",
        study_date: str = "20260101",
        **attributes: object,
    ) -> Study:
        """A new synthetic CT study (tests/dicom_synth.ct_study, `instances` per series) written to
        `directory` and uploaded; `attributes` set any other attribute by keyword on every instance."""
        paths = ct_study(
            directory,
            instances,
            patient_id=patient_id,
            series=series,
            attributes={"AccessionNumber": accession, "StudyDate": study_date, **attributes},
        )
        answers = [self._call("POST", "/instances", content=path.read_bytes()) for path in paths]
        datasets = [dcmread(path, stop_before_pixels=True) for path in paths]
        return Study(
            uid=datasets[0].StudyInstanceUID,
            orthanc_id=answers[0]["ParentStudy"],
            accession=accession,
            patient_id=patient_id,
            paths=paths,
            instances=[answer["ID"] for answer in answers],
            sop_instance_uids=[ds.SOPInstanceUID for ds in datasets],
        )

    def studies(self) -> list[dict]:
        """Every study, expanded (MainDicomTags, PatientMainDicomTags, Series, ...)."""
        return self._call("GET", "/studies", params={"expand": ""})

    def find_studies(self, **main_tags: str) -> list[dict]:
        """Studies whose main DICOM tags match (POST /tools/find, Orthanc's wildcards), expanded."""
        return self._call("POST", "/tools/find", json={"Level": "Study", "Query": main_tags, "Expand": True})

    def study_instances(self, study: str) -> list[dict]:
        """The instances of a study (by Orthanc's id), as Orthanc describes them."""
        return self._call("GET", f"/studies/{study}/instances")

    def count(self) -> int:
        """How many instances Orthanc has."""
        return self._call("GET", "/statistics")["CountInstances"]

    def delete_instance(self, instance: str) -> None:
        self._call("DELETE", f"/instances/{instance}")

    def set_modality(self, name: str, aet: str, host: str, port: int, **options: object) -> None:
        """Add or replace a DicomModalities entry at runtime; `options` e.g. AllowFind=False."""
        self._call("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port, **options})

    def remove_modality(self, name: str) -> None:
        self._call("DELETE", f"/modalities/{name}")

    def sending_order(self, study: Study) -> list[str]:
        """The SOPInstanceUIDs of `study` in the order Orthanc 1.10.1 sends them on C-MOVE and C-GET:
        the reverse of the upload order (observed; tests/unit/test_test_pacs.py asserts it)."""
        return study.sop_instance_uids[::-1]

    # -- faults

    def attachment_path(self, instance: str) -> Path:
        """Where Orthanc keeps the instance's DICOM file."""
        uuid = self._call("GET", f"/instances/{instance}/attachments/dicom/info")["Uuid"]
        return self.storage / uuid[:2] / uuid[2:4] / uuid

    def break_instance(self, instance: str) -> Path:
        """Fault 1: remove the instance's file, not its index entry; returns the path removed."""
        path = self.attachment_path(instance)
        path.unlink()
        return path

    def _set_rules(self, **change: dict) -> None:
        rules = json.loads(self.rules_path.read_text()) if self.rules_path.exists() else {}
        rules.update(change)
        partial = self.rules_path.with_suffix(".partial")
        partial.write_text(json.dumps({kind: match for kind, match in rules.items() if match}))
        partial.replace(self.rules_path)  # the filter never reads half a file

    def refuse_store(self, **match: Iterable[str] | str) -> None:
        """Fault 2: C-STOREs of matching instances answered 0xA700, not stored; no arguments: none."""
        self._set_rules(refuse=_values(match))

    def drop_store(self, **match: Iterable[str] | str) -> None:
        """C-STOREs of matching instances answered 0x0000 but not stored; no arguments: none."""
        self._set_rules(drop=_values(match))
