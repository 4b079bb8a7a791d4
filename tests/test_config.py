"""Configuration: TOML, then environment, then flags; the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from unionstore.config import ConfigError, load, parse_mount, with_embedded_default


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "u.toml"
    path.write_text(text)
    return path


def test_toml_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "127.0.0.1:1000"\nregion = "eu-west-1"\n'
        '[[mounts]]\nbucket = "models"\nuri = "file:///m"\n'
        '[[keys]]\naccess_key = "A"\nsecret_key = "S"\nuser = "alice"\n'
        'grants = { "models" = "read" }\n'
        '[buckets.models]\nanonymous = "read"\n',
    )
    cfg = load(path, env={})
    assert cfg.listen == "127.0.0.1:1000" and cfg.region == "eu-west-1"
    assert cfg.mounts[0].bucket == "models" and cfg.keys[0].user == "alice"
    assert cfg.keys[0].grants == {"models": "read"}
    assert cfg.buckets["models"].anonymous == "read"
    cfg = load(path, env={"UNIONSTORE_LISTEN": "127.0.0.1:2000", "UNIONSTORE_REGION": "x"})
    assert cfg.listen == "127.0.0.1:2000" and cfg.region == "x"
    cfg = load(
        path,
        env={"UNIONSTORE_LISTEN": "127.0.0.1:2000"},
        flags={"listen": "127.0.0.1:3000", "mounts": ["data/sub=file:///d"], "region": None},
    )
    assert cfg.listen == "127.0.0.1:3000"
    assert [(m.bucket, m.prefix, m.uri) for m in cfg.mounts] == [("data", "sub/", "file:///d")]
    assert cfg.region == "eu-west-1"


def test_env_mounts_and_keys() -> None:
    cfg = load(
        None,
        env={
            "UNIONSTORE_MOUNTS": "aaa=file:///a,bbb/p=hdfs://nn:9000/b",
            "UNIONSTORE_ACCESS_KEY": "K",
            "UNIONSTORE_SECRET_KEY": "S",
        },
    )
    assert [(m.bucket, m.prefix) for m in cfg.mounts] == [("aaa", ""), ("bbb", "p/")]
    assert [m.uri for m in cfg.mounts] == ["file:///a", "hdfs://nn:9000/b"]
    assert cfg.keys[0].access_key == "K" and cfg.keys[0].admin


@pytest.mark.parametrize(
    "text",
    [
        "nonsense = 1\n",
        'listen = "noport"\n',
        '[[mounts]]\nbucket = "Bad_Name"\nuri = "file:///x"\n',
        '[[mounts]]\nuri = "file:///x"\n',
        '[[keys]]\naccess_key = "A"\nsecret_key = "S"\ngrants = { "*" = "admin" }\n',
        "this is not toml",
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load(write(tmp_path, text), env={})


def test_bad_mount_flag() -> None:
    with pytest.raises(ConfigError):
        parse_mount("no-equals-sign")


def test_embedded_default_serves_data_with_a_kept_key(tmp_path: Path) -> None:
    cfg = load(None, env={}, flags={"cache_dir": str(tmp_path / "cache")})
    cfg1, generated = with_embedded_default(cfg, tmp_path)
    assert generated and (tmp_path / "data").is_dir()
    assert cfg1.bucket_root == (tmp_path / "data").resolve().as_uri()
    cfg2, _ = with_embedded_default(cfg, tmp_path)
    assert cfg2.keys[0].secret_key == cfg1.keys[0].secret_key  # the same key next time


def test_resolved_config_round_trips_for_workers(tmp_path: Path) -> None:
    from unionstore.config import from_json, to_json

    path = write(
        tmp_path,
        '[[mounts]]\nbucket = "models"\nuri = "file:///m"\noptions = { user = "u" }\n'
        'metadata_ttl = "5s"\n[[keys]]\naccess_key = "A"\nsecret_key = "S"\n'
        '[cache]\nblock_size = "128KiB"\n[buckets.models]\nanonymous = "read"\n',
    )
    cfg = load(path, env={}, flags={"workers": 3})
    assert from_json(to_json(cfg)) == cfg
