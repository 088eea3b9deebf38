"""Scratch space is per program: what one program writes to /tmp, /var/tmp or /dev/shm (or its working
directory), the next one on the same worker does not see."""

from __future__ import annotations

from pathlib import Path

import pytest

from pper.execution import Executor, namespaces_available
from pper.tasks import AssertTests, Task

PLACES = ("/tmp/x", "/var/tmp/x", "/dev/shm/x", "x")  # the last: the working directory (cwd, HOME, TMPDIR)
TASK = Task(id="scratch/f", prompt="", entry_point="f", tests=AssertTests(asserts=("assert f() == 4",)))
WRITER = f"import os\ndef f():\n    for p in {PLACES!r}:\n        open(p, 'w').write('left behind')\n    return 4\n"
READER = f"import os\ndef f():\n    return 4 - sum(os.path.exists(p) for p in {PLACES!r})\n"


@pytest.mark.skipif(not namespaces_available(), reason="needs namespaces: without them /tmp is the host's")
def test_a_program_cannot_read_what_an_earlier_program_wrote_on_the_same_worker():
    with Executor(workers=1, isolation="namespaces") as executor:
        assert executor.run(TASK, READER).all_passed  # nothing there at first
        results = [executor.run(TASK, program) for program in (WRITER, READER, WRITER, WRITER, READER)]
    assert [r.all_passed for r in results] == [True] * 5, [r.error for r in results]


def test_the_working_directory_is_empty_for_every_program_without_namespaces_too():
    task = Task(id="scratch/cwd", prompt="", entry_point="f", tests=AssertTests(asserts=("assert f() == 1",)))
    writer = "def f():\n    open('x', 'w').write('left behind')\n    return 1\n"
    reader = "import os\ndef f():\n    return 1 - os.path.exists('x')\n"
    with Executor(workers=1, isolation="none") as executor:
        results = [executor.run(task, program) for program in (writer, reader)]
        server = Path(f"/tmp/pper-sandbox-{executor._sandboxes[0].proc.pid}")
        assert server.is_dir()
    assert [r.all_passed for r in results] == [True, True], [r.error for r in results]
    assert not server.exists()  # the server's directory in the host's /tmp goes with it


@pytest.mark.skipif(not namespaces_available(), reason="needs namespaces: without them /tmp is the host's")
def test_scratch_space_is_bounded():
    # tmpfs is memory outside RLIMIT_AS: each scratch directory holds 256 MiB at most (16 files of 16 MiB)
    task = Task(id="scratch/fill", prompt="", entry_point="f", tests=AssertTests(asserts=("assert f() <= 16",)))
    filler = (
        "def f():\n    n = 0\n    for i in range(24):\n        try:\n"
        "            with open(f'/tmp/fill{i}', 'wb') as out:\n                out.write(b'x' * (16 << 20))\n"
        "        except OSError:\n            break\n        n += 1\n    return n\n"
    )
    with Executor(workers=1) as executor:
        result = executor.run(task, filler)
    assert result.all_passed, result.tests[0].error
