import os
import stat

import pytest

from senet import fileio


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        fileio.atomic_write(tmp_path / "f", b"x")
        open(tmp_path / "plain", "w").close()
    finally:
        os.umask(old)
    assert (
        stat.S_IMODE((tmp_path / "f").stat().st_mode)
        == mode
        == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    )
