"""A job's working directory wins over the installed project for both packages (issue 14, fault 1).

`ray job submit --working-dir DIR` runs the job with DIR as its current directory and on PYTHONPATH (Ray's
working_dir plugin prepends it), while this venv's editable install maps both packages to the checkout. The
test makes such an upload (a copy of the checkout) and imports from it exactly that way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = (
    "import json, platform; from clipsynth_platform.runtime.origin import code_origin; "
    "import clipsynth_platform.ingest.store as store; "
    "print(json.dumps({**code_origin().to_dict(), 'store': store.__file__, 'std': platform.system()}))"
)


def _upload(tmp_path: Path) -> Path:
    up = tmp_path / "uploaded"
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("clipsynth_core", "platform"):
        shutil.copytree(ROOT / name, up / name, ignore=ignore)
    shutil.copy(ROOT / "clipsynth_platform.py", up / "clipsynth_platform.py")
    return up


def _import_in(directory: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(directory)}
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=directory, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_uploaded_working_dir_provides_both_packages(tmp_path):
    up = _upload(tmp_path)
    got = _import_in(up)
    assert got["core_root"] == got["platform_root"] == str(up.resolve()), got
    assert got["store"] == str(up.resolve() / "platform" / "ingest" / "store.py")
    assert got["consistent"] and got["std"] == "Linux"  # the standard library's platform is intact


def test_without_the_root_module_the_upload_would_mix_code(tmp_path):
    """What fault 1 was: the installed finder supplies clipsynth_platform when the upload lacks the module."""
    up = _upload(tmp_path)
    (up / "clipsynth_platform.py").unlink()
    got = _import_in(up)
    assert got["core_root"] == str(up.resolve()) and got["platform_root"] == str(ROOT)
    assert not got["consistent"]


def test_mixed_code_is_refused_with_a_clear_message(monkeypatch):
    from clipsynth_platform.runtime import origin

    monkeypatch.setattr(origin, "code_origin", lambda: origin.CodeOrigin("/image", "/upload"))
    with pytest.raises(RuntimeError, match=r"mixed code: clipsynth_core from /image, clipsynth_platform from /upload"):
        origin.require_consistent_origin()
