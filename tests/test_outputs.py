"""converters.outputs: same-file refusal, pre-flight checks, atomic writers that turn OS errors into one line
and leave nothing partial, and the training-folder lock."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from converters import outputs
from converters.errors import UserError
from converters.outputs import (
    OutputLock,
    atomic_directory,
    atomic_output,
    check_outputs,
    prepare_output,
    prepare_output_dir,
    remove_stale_temporaries,
)
from tests.faults import raiser, read_only, tmpfs


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ same file
def test_an_output_that_is_an_input_is_refused_by_path_symlink_and_hard_link(tmp_path):
    src = tmp_path / "src.pth"
    src.write_bytes(b"weights")
    (tmp_path / "link.pth").symlink_to(src)
    os.link(src, tmp_path / "hard.pth")
    for out in (src, tmp_path / "." / "src.pth", tmp_path / "link.pth", tmp_path / "hard.pth"):
        with pytest.raises(UserError, match=r"is also the input --src; choose another --out") as info:
            check_outputs({"--src": src}, {"--out": out})
        assert info.value.path == str(out)
    check_outputs({"--src": src}, {"--out": tmp_path / "other.pdparams"})  # a different file is fine
    assert src.read_bytes() == b"weights"


def test_two_outputs_that_are_one_file_are_refused_even_before_they_exist(tmp_path):
    with pytest.raises(UserError, match="given as --out and --report: two outputs would be one file; "
                                        "choose another --report"):
        check_outputs({"--src": None}, {"--out": tmp_path / "a.json", "--report": tmp_path / "sub/../a.json"})
    assert listing(tmp_path) == []


def test_an_output_folder_inside_an_input_folder_is_refused(tmp_path):
    (tmp_path / "images" / "0").mkdir(parents=True)
    with pytest.raises(UserError, match="is inside the input folder SRC"):
        check_outputs({"SRC": tmp_path / "images"}, {"OUT": tmp_path / "images" / "pack"}, folders=True)
    with pytest.raises(UserError, match="is also the input SRC"):
        check_outputs({"SRC": tmp_path / "images"}, {"OUT": tmp_path / "images"}, folders=True)
    check_outputs({"SRC": tmp_path / "images"}, {"OUT": tmp_path / "pack"}, folders=True)


# ------------------------------------------------------------------------------------ pre-flight checks
def test_preflight_finds_a_folder_target_a_file_parent_and_a_long_name(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path: "is a directory; give a file name",
        tmp_path / "file" / "out.pdparams": f"cannot write: {tmp_path / 'file'} is a file, not a folder",
        tmp_path / "file" / "deeper" / "out.pdparams": f"{tmp_path / 'file'} is a file, not a folder",
        tmp_path / ("n" * 300): "cannot write: file name too long (300 bytes, the file system allows 255)",
        tmp_path / ("d" * 256) / "out.json": "file name too long (256 bytes",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=None) as info:
            prepare_output(path)
        assert message in str(info.value) and info.value.path == str(path)
    with pytest.raises(UserError, match="is a file, not a folder"):
        prepare_output_dir(tmp_path / "file")
    assert listing(tmp_path) == ["file"]


def test_a_long_but_valid_name_is_written_through_a_shortened_temporary(tmp_path):
    target = tmp_path / ("w" * 255)
    with atomic_output(target) as tmp:
        assert len(tmp.name) == 255 and tmp.name.startswith(".w")
        tmp.write_bytes(b"ok")
    assert listing(tmp_path) == [target.name] and target.read_bytes() == b"ok"


def test_a_read_only_folder_is_found_before_the_work(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder) as real:
        if not real:  # not root: the answer access(2) gives on a read-only file system
            monkeypatch.setattr(outputs.os, "access", lambda *a, **k: False)
            monkeypatch.setattr(outputs.os, "statvfs", lambda p: os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255)))
        for check in (lambda: prepare_output(folder / "out.pdparams"),
                      lambda: prepare_output(folder / "new" / "out.json"),
                      lambda: prepare_output_dir(folder / "run")):
            with pytest.raises(UserError, match=r"cannot write: read-only file system \(") as info:
                check()
            assert str(folder) in str(info.value)
        assert listing(folder) == []


# --------------------------------------------------------------------------- OS errors during the write
WRITE_ERRORS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded", errno.EISDIR: "is a directory",
                errno.ENOTDIR: "a parent is not a directory", errno.ENAMETOOLONG: "file name too long"}


@pytest.mark.parametrize("code", list(WRITE_ERRORS), ids=[errno.errorcode[c] for c in WRITE_ERRORS])
@pytest.mark.parametrize("where", ["write", "rename"])
def test_an_os_error_while_writing_is_one_line_naming_the_target_and_keeps_the_old_file(
        tmp_path, monkeypatch, code, where):
    target = tmp_path / "model.pdparams"
    target.write_bytes(b"previous")
    if where == "rename":
        monkeypatch.setattr(outputs.os, "replace", raiser(code, str(tmp_path / ".model.pdparams.tmp-1")))
        monkeypatch.setattr(outputs, "_ours", lambda err, *paths: True)  # the injected file name is ours
    with pytest.raises(UserError) as info, atomic_output(target) as tmp:
        tmp.write_bytes(b"partial new")
        if where == "write":
            raiser(code)()
    assert str(info.value) == f"{target}: cannot write: {WRITE_ERRORS[code]}"
    assert target.read_bytes() == b"previous" and listing(tmp_path) == ["model.pdparams"]


def test_an_os_error_about_another_file_is_not_blamed_on_the_output(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_output(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
        open(tmp_path / "missing-input.bin", "rb")  # noqa: SIM115 (an input that is not there)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, RuntimeError])
def test_every_failure_removes_the_temporary_and_keeps_the_previous_output(tmp_path, interrupt):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(interrupt), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise interrupt()
    assert listing(tmp_path) == ["out.bin"] and target.read_bytes() == b"previous"
    with pytest.raises(interrupt), atomic_directory(tmp_path / "pack") as tmp:
        (tmp / "train.rec").write_bytes(b"half")
        raise interrupt()
    assert listing(tmp_path) == ["out.bin"]


def test_a_full_disk_keeps_the_previous_file_and_leaves_nothing(tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    with tmpfs(disk, 256) as real:
        target = disk / "weights.pdparams"
        target.write_bytes(b"p" * 100_000)
        if not real:
            monkeypatch.setattr(outputs, "_fsync", raiser(errno.ENOSPC))
        with pytest.raises(UserError, match="weights.pdparams: cannot write: no space left on device"), \
                atomic_output(target) as tmp, open(tmp, "wb") as fh:
            for _ in range(40):  # 400 KB into a 256 KiB disk that already holds 100 KB
                fh.write(b"n" * 10_000)
        assert listing(disk) == ["weights.pdparams"] and target.read_bytes() == b"p" * 100_000
        with pytest.raises(UserError, match="pack: cannot write: no space left on device"), \
                atomic_directory(disk / "pack") as tmp:
            if not real:
                raiser(errno.ENOSPC)()
            (tmp / "train.rec").write_bytes(b"r" * 400_000)
        assert listing(disk) == ["weights.pdparams"]


# -------------------------------------------------------------------------------------- folder lock
def test_a_second_lock_refuses_naming_the_holder_pid_and_release_frees_it(tmp_path):
    lock = OutputLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    with pytest.raises(UserError) as info:
        OutputLock(tmp_path).acquire()
    assert str(info.value).startswith(f"{tmp_path}: in use by another run (pid {os.getpid()} on ")
    assert "\n" not in str(info.value)
    lock.release()
    assert listing(tmp_path) == []
    with OutputLock(tmp_path):
        pass
    assert listing(tmp_path) == []


def test_a_lock_held_by_another_process_names_that_process(tmp_path):
    code = ("import sys, time; from converters.outputs import OutputLock; "
            f"OutputLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another run \\(pid {holder.pid} on "):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the flock when the holder died: its file is stale and is taken over
    with OutputLock(tmp_path) as lock:
        assert lock.stale is not None and lock.stale.split()[0] == str(holder.pid)


def test_a_stale_lock_file_is_taken_over_with_a_log_line(tmp_path, caplog):
    (tmp_path / ".lock").write_text("2147480000 elsewhere\n")
    with caplog.at_level("WARNING", logger="converters.outputs"), OutputLock(tmp_path) as lock:
        assert lock.stale == "2147480000 elsewhere"
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    assert "taking over the stale lock of pid 2147480000 on elsewhere" in caplog.text


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".checkpoint_rank0.pdckpt.tmp-{dead.pid}").write_bytes(b"half")
    (tmp_path / f".pack.tmp-{dead.pid}").mkdir()
    (tmp_path / f".model.pt.tmp-{os.getpid()}").write_bytes(b"mine")
    (tmp_path / "checkpoint_rank0.pdckpt").write_bytes(b"whole")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert listing(tmp_path) == [f".model.pt.tmp-{os.getpid()}", "checkpoint_rank0.pdckpt"]


def test_the_atomic_write_is_fast_enough_for_many_small_files(tmp_path):
    started = time.perf_counter()
    for i in range(20):
        with atomic_output(tmp_path / f"f{i}.json") as tmp:
            tmp.write_text("{}")
    assert time.perf_counter() - started < 5
    assert len(listing(tmp_path)) == 20


def test_a_user_error_inside_the_block_is_kept_even_when_raised_while_handling_an_os_error(tmp_path):
    with pytest.raises(UserError, match="^input.bin: truncated$"), atomic_output(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"x")
        try:
            raiser(errno.ENOSPC)()
        except OSError:
            raise UserError("input.bin", "truncated") from None
    assert listing(tmp_path) == []


def test_a_forked_worker_does_not_keep_the_lock_of_a_killed_parent(tmp_path):
    running = tmp_path.parent / f"{tmp_path.name}.child-running"
    # the child marks that it runs: fork's after-fork handlers (which close the inherited lock) have run by then
    code = ("import os, time; from converters.outputs import OutputLock; "
            f"OutputLock({str(tmp_path)!r}).acquire(); child = os.fork()\n"
            f"if child == 0: open({str(running)!r}, 'w').close(); time.sleep(30); os._exit(0)\n"
            "print(child, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not running.exists() and time.monotonic() < deadline:  # a loaded machine may not run the child at once
        time.sleep(0.05)
    try:
        parent.kill()
        parent.wait()
        with OutputLock(tmp_path) as lock:  # the worker still runs, but holds no reference to the lock
            assert lock.stale.split()[0] == str(parent.pid)
    finally:
        os.kill(child, 9)
