"""A full disk and a read-only data directory: ratings, exports and rounds get clear errors, never a
plain 500 or a traceback. HTTP: 507 for a full disk, 503 + Retry-After for storage it may not write,
both naming the cause (and the database file); the CLI: exit code 2 and one line naming the path; a
round that cannot write leaves no folder, no partial folder and no registry change.

Read-only is real: the directory is bind-mounted read-only onto itself (tests run as root, where
chmod 0o555 stops nothing; without the right to mount, chmod is used when not root, else the test
skips). A full disk is simulated at the OS boundary: a write that raises OSError(ENOSPC).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy.exc
import yaml

from models.rounds import Round, RoundError
from server.storage_errors import FULL, READ_ONLY, StorageFault, storage_error, storage_fault
from server.store import Store
from server.store.records import GenerationRecord
from tests.conftest import FAKE_REGISTRY, ready_client
from tests.records import chat_record

HISTORY = [{"role": "user", "content": "Capital of Kenya?"}]


@contextmanager
def read_only(folder: Path):
    """`folder` read-only for everyone, root included, for the block's duration."""
    folder = folder.resolve()
    mounted = (
        subprocess.run(
            f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}'",
            shell=True,
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)  # a bind that did not remount
        if os.geteuid() == 0:
            pytest.skip("cannot mount here, and chmod does not stop root")
        folder.chmod(0o555)
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def _generation(id: str) -> GenerationRecord:
    return chat_record(HISTORY, id=id)


# -- what a storage fault is ---------------------------------------------------------------------


def test_storage_faults_are_told_apart_from_other_errors():
    assert storage_fault(OSError(errno.ENOSPC, "No space left on device", "/data/x")) == StorageFault(FULL, "/data/x")
    assert storage_fault(OSError(errno.EROFS, "Read-only file system"), "/data/y") == StorageFault(READ_ONLY, "/data/y")
    wrapped = sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))
    assert storage_fault(wrapped, database="/data/stagechat.db") == StorageFault(FULL, "/data/stagechat.db")
    readonly = sqlalchemy.exc.OperationalError(
        "INSERT", {}, sqlite3.OperationalError("attempt to write a readonly database")
    )
    assert storage_fault(readonly).kind == READ_ONLY
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("saving failed") from exc
    except RuntimeError as exc:
        assert storage_fault(exc, "/data/rounds/x").kind == FULL  # found along the chain
    assert storage_fault(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is None
    assert (
        storage_fault(sqlalchemy.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table"))) is None
    )


def test_the_api_answers_507_for_a_full_disk_and_503_with_retry_after_for_read_only():
    full = storage_error(StorageFault(FULL, "/data/stagechat.db"), "req-1")
    assert full.status == 507 and full.code == "storage_full"
    assert "no space left on device (/data/stagechat.db)" in full.message and "req-1" in full.message
    ro = storage_error(StorageFault(READ_ONLY, "/data/stagechat.db"))
    assert ro.status == 503 and ro.code == "storage_read_only" and int(ro.headers["Retry-After"]) > 0
    assert "read-only" in ro.message


# -- ratings and exports over HTTP ---------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def _rate(client, response_id: str):
    return client.post("/v1/feedback", json={"response_id": response_id, "rating": "up"})


def test_a_rating_on_a_full_disk_is_a_507_naming_the_cause(fake_app, data_dir, monkeypatch):
    store = Store(f"sqlite:///{data_dir / 'stagechat.db'}")
    store.record_generation(_generation("chatcmpl-1"))
    with ready_client(*fake_app(store=store)) as client:

        def disk_full(*args, **kwargs):  # what SQLite says when its write() gets ENOSPC
            raise sqlalchemy.exc.OperationalError(
                "INSERT INTO feedback ...", {}, sqlite3.OperationalError("database or disk is full")
            )

        monkeypatch.setattr(store, "rate", disk_full)
        r = _rate(client, "chatcmpl-1")
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "storage_full" and str(data_dir / "stagechat.db") in error["message"]
        monkeypatch.undo()
        assert _rate(client, "chatcmpl-1").status_code == 200  # space freed: rated


def test_a_rating_on_a_read_only_data_dir_is_a_503_naming_it_and_exports_still_read(fake_app, data_dir):
    store = Store(f"sqlite:///{data_dir / 'stagechat.db'}")
    store.record_generation(_generation("chatcmpl-1"))
    store.rate("chatcmpl-1", "up", rater="anonymous")
    with ready_client(*fake_app(store=store)) as client:
        with read_only(data_dir):
            store.engine.dispose()  # connections opened from now on meet the read-only directory
            r = _rate(client, "chatcmpl-1")
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
            error = r.json()["error"]
            assert error["code"] == "storage_read_only" and str(data_dir / "stagechat.db") in error["message"]
            with client.websocket_connect("/v1/ws") as ws:  # the UI's door says the same
                ws.send_json({"type": "feedback", "id": "f1", "response_id": "chatcmpl-1", "rating": "down"})
                frame = ws.receive_json()
                assert frame["type"] == "error" and frame["error"]["code"] == "storage_read_only"
            export = client.get("/v1/feedback/export", params={"format": "kto"})  # a read: still served
            assert export.status_code == 200 and len(export.text.splitlines()) == 1
        store.engine.dispose()
        assert _rate(client, "chatcmpl-1").status_code == 200  # writable again: rated
        assert store.list_feedback()[0][0].rating == "up"  # the refused "down" was never stored


def test_an_export_whose_store_cannot_be_opened_is_a_json_error_not_a_cut_stream(fake_app, data_dir, monkeypatch):
    store = Store(f"sqlite:///{data_dir / 'stagechat.db'}")
    with ready_client(*fake_app(store=store)) as client:

        def cannot_open(*args, **kwargs):  # SQLite on a data dir whose files became unreadable
            raise sqlalchemy.exc.OperationalError(
                "SELECT ...", {}, sqlite3.OperationalError("unable to open database file")
            )

        monkeypatch.setattr(store, "iter_rated_answers", cannot_open)
        r = client.get("/v1/feedback/export", params={"format": "kto"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_read_only", r.text


# -- the export command ---------------------------------------------------------------------------


def _export(database: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "feedback",
            "export",
            "--format",
            "kto",
            "--out",
            str(out),
            "--database-url",
            f"sqlite:///{database}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_export_command_into_a_read_only_folder_exits_2_naming_the_path(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'stagechat.db'}")
    store.record_generation(_generation("chatcmpl-1"))
    store.rate("chatcmpl-1", "up", rater="anonymous")
    store.close()
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    with read_only(out_dir):
        done = _export(tmp_path / "stagechat.db", out_dir / "kto.jsonl")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # (after the store's log lines) one line, no traceback
    assert "Traceback" not in done.stderr and last.startswith("stagechat feedback export: cannot export:")
    assert "read-only" in last and str(out_dir) in last
    assert list(out_dir.iterdir()) == []


def test_an_export_to_a_full_disk_exits_2_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    import io

    from cli.feedback import export_feedback
    from cli.main import parser

    store = Store(f"sqlite:///{tmp_path / 'stagechat.db'}")
    store.record_generation(_generation("chatcmpl-1"))
    store.rate("chatcmpl-1", "up", rater="anonymous")
    store.close()

    class FullDisk(io.StringIO):
        def write(self, text):  # the OS boundary: write(2) fails with ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = Path.open

    def open_on_a_full_disk(self, mode="r", *args, **kwargs):
        if "w" in mode and self.name.endswith(".tmp"):  # the export's staging file: created, not writable
            self.touch()
            return FullDisk()
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_on_a_full_disk)
    out = tmp_path / "kto.jsonl"
    # Parsed by the real command line, so a flag added to it cannot be missing here.
    args = parser().parse_args(
        [
            "feedback",
            "export",
            "--format",
            "kto",
            "--out",
            str(out),
            "--database-url",
            f"sqlite:///{tmp_path / 'stagechat.db'}",
        ]
    )
    assert export_feedback(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"stagechat feedback export: cannot export: no space left on device ({out}); nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir() if "kto" in p.name) == []  # no file, no .tmp


# -- rounds ---------------------------------------------------------------------------------------


@pytest.fixture
def registry_file(tmp_path) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(FAKE_REGISTRY))
    return path


def _meta(result, seconds):
    return {"result": result}


def test_a_round_on_a_full_disk_is_a_round_error_and_leaves_nothing(registry_file, tmp_path):
    before = registry_file.read_text()
    round_ = Round.open(registry_file, tmp_path, "sft", "sft-2")

    def train(folder: Path):
        (folder / "adapter_config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")  # saving the weights: the disk is full

    with pytest.raises(RoundError) as failed:
        round_.run(train, _meta, description="x")
    assert str(failed.value) == (
        f"round 'sft-2' could not be written: no space left on device ({round_.out_dir}); nothing was registered"
    )
    assert registry_file.read_text() == before
    assert list((tmp_path / "rounds").iterdir()) == []  # no folder, no partial folder


def test_a_round_in_a_read_only_data_dir_is_a_round_error_and_leaves_nothing(registry_file, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    before = registry_file.read_text()
    round_ = Round.open(registry_file, data_dir, "sft", "sft-2")
    trained = []
    with read_only(data_dir), pytest.raises(RoundError, match=r"read-only .*" + str(data_dir)):
        round_.run(lambda folder: trained.append(folder), _meta, description="x")
    assert trained == []  # refused before any training ran
    assert registry_file.read_text() == before and list(data_dir.iterdir()) == []


def test_a_round_whose_registry_cannot_be_written_removes_its_folder(registry_file, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    config = config_dir / "stages.yaml"
    config.write_text(registry_file.read_text())
    round_ = Round.open(config, data_dir, "sft", "sft-2")
    with read_only(config_dir), pytest.raises(RoundError, match="read-only"):
        round_.run(lambda folder: (folder / "adapter_config.json").write_text("{}") and None, _meta, description="x")
    assert config.read_text() == registry_file.read_text()
    assert not round_.out_dir.exists() and list((data_dir / "rounds").iterdir()) == []


def test_serve_on_a_read_only_data_dir_exits_2_naming_the_database(registry_file, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with read_only(data_dir):
        done = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--config", str(registry_file), "--no-ui"],
            env={**os.environ, "STAGECHAT_DATA_DIR": str(data_dir)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"stagechat serve: cannot start: storage is read-only (or not writable) ({data_dir / 'stagechat.db'})"
    )
