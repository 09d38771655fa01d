"""P2P_ALLOWED_ROOTS: flow parameters must resolve under the configured roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2p.core.config import BatchPredictConfig
from p2p.core.errors import PathNotAllowedError
from p2p.core.roots import allowed_roots, check_path, checked_batch_config


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


def test_object_storage_roots_bound_urls(tmp_path: Path) -> None:
    roots = allowed_roots(os.pathsep.join([str(tmp_path), "s3://bucket/in", "s3://out/"]))
    assert roots == [tmp_path.resolve(), "s3://bucket/in", "s3://out"]
    assert check_path("s3://bucket/in/a.tif", roots) == "s3://bucket/in/a.tif"
    assert check_path("s3://out/x/mosaic.tif", roots) == "s3://out/x/mosaic.tif"
    for url in ("s3://bucket/inside/a.tif", "s3://other/a.tif", "s3://bucket/in/../b.tif"):
        with pytest.raises(PathNotAllowedError):
            check_path(url, roots)
    with pytest.raises(PathNotAllowedError):
        check_path("s3://bucket/in/a.tif", allowed_roots(str(tmp_path)))
    assert check_path("s3://anything/a.tif", []) == "s3://anything/a.tif"


def test_required_roots_refuse_an_unset_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2P_ALLOWED_ROOTS", raising=False)
    with pytest.raises(PathNotAllowedError, match="P2P_ALLOWED_ROOTS: unset"):
        allowed_roots(required=True)
    with pytest.raises(PathNotAllowedError, match="unset"):
        allowed_roots(" ", required=True)
    assert allowed_roots() == []  # local CLI use stays unrestricted


def test_batch_paths_checked_are_the_paths_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    (data / "other").mkdir()
    for name in ("in/a.tif", "in/b.tif", "other/c.tif"):
        (data / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(data)  # a symlink into the root, swappable later
    monkeypatch.setenv("P2P_ALLOWED_ROOTS", str(data))
    config = BatchPredictConfig(
        workspace=str(data / "ws" / ".." / "ws"),
        model=str(tmp_path / "link" / "model"),
        scenes=[str(tmp_path / "link" / "in" / "*.tif"), f"{data}/in/x/../../other/c.tif"],
        output=str(data / "out.tif"),
    )
    checked, scenes = checked_batch_config(config, require_roots=True)
    resolved = data.resolve()
    assert checked.workspace == str(resolved / "ws")
    assert checked.model == str(resolved / "model")
    assert checked.scenes == [str(resolved / "in" / "*.tif"), str(resolved / "other" / "c.tif")]
    assert [s.source for s in scenes] == [
        [str(resolved / "in" / "a.tif")],
        [str(resolved / "in" / "b.tif")],
        [str(resolved / "other" / "c.tif")],
    ]
