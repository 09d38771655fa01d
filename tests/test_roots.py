"""P2P_ALLOWED_ROOTS: flow parameters must resolve under the configured roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2p.core.errors import PathNotAllowedError
from p2p.core.roots import allowed_roots, check_path


def test_unset_means_no_restriction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2P_ALLOWED_ROOTS", raising=False)
    assert allowed_roots() == []
    assert check_path("/etc/passwd") == Path("/etc/passwd")


def test_paths_under_a_root_pass_resolved(tmp_path: Path) -> None:
    roots = allowed_roots(os.pathsep.join([str(tmp_path / "data"), str(tmp_path / "work")]))
    assert check_path(tmp_path / "work" / "x" / "..", roots) == (tmp_path / "work").resolve()
    assert check_path(tmp_path / "data" / "new.tif", roots) == tmp_path / "data" / "new.tif"


def test_dotdot_and_sibling_prefix_escapes_are_refused(tmp_path: Path) -> None:
    roots = allowed_roots(str(tmp_path / "data"))
    with pytest.raises(PathNotAllowedError, match="outside the allowed roots"):
        check_path(tmp_path / "data" / ".." / "secret.tif", roots)
    with pytest.raises(PathNotAllowedError):
        check_path(tmp_path / "data-other" / "a.tif", roots)  # a prefix, not a parent


def test_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "outside.tif").write_bytes(b"x")
    link = tmp_path / "data" / "link.tif"
    link.symlink_to(tmp_path / "outside.tif")
    with pytest.raises(PathNotAllowedError) as err:
        check_path(link, allowed_roots(str(tmp_path / "data")))
    assert str(link) in str(err.value)


def test_roots_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2P_ALLOWED_ROOTS", f"{tmp_path}{os.pathsep}")
    assert allowed_roots() == [tmp_path.resolve()]
    with pytest.raises(PathNotAllowedError):
        check_path("/tmp/../etc/hosts")
