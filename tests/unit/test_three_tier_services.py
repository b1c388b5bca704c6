"""e2e/three_tier/services.py, the parts that need no root and no daemon: the generated
httpd config, and the commands that put a web server in its pod's namespaces. The daemons
themselves are checked by ``python -m e2e.three_tier.check`` (root; see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.three_tier import services as s
from e2e.three_tier.example import load

PHP = Path("/usr/lib/apache2/modules/libphp8.2.so")


def config(tmp_path: Path) -> str:
    ex = load()
    vhosts = [
        s.VirtualHostConf(v.server_name, v.document_root, v.aliases) for v in ex.virtual_hosts
    ]
    db = s.Database("10.244.0.9", ex.mysql_port, ex.database, ex.user, ex.password)
    return s.apache_config(
        tmp_path, "10.244.1.5", ex.web_port, "web-abc", ex.content_mount, vhosts, db,
        ex.healthz_path, php=PHP,
    )  # fmt: skip


def test_config_listens_on_the_pod_address_with_the_examples_virtual_hosts(tmp_path: Path) -> None:
    conf = config(tmp_path)
    lines = conf.splitlines()
    assert "Listen 10.244.1.5:8080" in lines
    names = [line.split()[1] for line in lines if line.strip().startswith("ServerName ")]
    assert names == ["web-abc", "www.example.com", "shop.example.com"]  # server, then in order
    assert '    DocumentRoot "/srv/www/www.example.com"' in lines
    assert f'LoadModule php_module "{PHP}"' in lines
    assert 'Alias /healthz "' + str(tmp_path / "healthz") + '"' in lines


def test_config_gives_the_page_its_environment_and_a_session_dir_of_its_own(
    tmp_path: Path,
) -> None:
    conf = config(tmp_path)
    for line in (
        'SetEnv POD_NAME "web-abc"',
        'SetEnv DB_HOST "10.244.0.9"',
        'SetEnv DB_PORT "3306"',
        'SetEnv DB_NAME "web"',
        'SetEnv DB_USER "web"',
        'SetEnv DB_PASSWORD "change-me-web"',
        f'php_admin_value session.save_path "{tmp_path / "sessions"}"',
    ):
        assert line in conf.splitlines()
    # nothing relative to a ServerRoot of Debian's or the httpd image's
    assert "/usr/local/apache2" not in conf and "/etc/apache2" not in conf


def test_config_refuses_values_it_cannot_quote(tmp_path: Path) -> None:
    db = s.Database("h", 3306, "web", "web", 'pa"ss')
    with pytest.raises(s.ServiceError, match="not representable"):
        s.apache_config(tmp_path, "10.0.0.1", 8080, "w", "/srv/www", [], db, "/healthz", php=PHP)


def test_a_web_server_runs_in_its_pods_network_mount_and_uts_namespaces() -> None:
    argv = s.in_pod("e2e-pod-1", "web-abc", s.LocalDir("/tmp/c"), "/srv/www", ["apache2", "-X"])
    assert argv[:4] == ["ip", "netns", "exec", "e2e-pod-1"]
    assert argv[4:9] == ["unshare", "--mount", "--uts", "--propagation", "private"]
    assert argv[-3:] == ["sh", "apache2", "-X"]
    script = argv[argv.index("-c") + 1]
    assert script.splitlines()[:2] == ["set -e", "hostname web-abc"]
    assert "mount --bind /tmp/c /srv/www" in script
    assert script.splitlines()[-1] == 'exec "$@"'


def test_the_share_mounts_as_the_persistent_volume_says() -> None:
    ex = load()
    argv = s.mount_share(
        "e2e-pod-1", ex.nfs_server, ex.nfs_path, ex.content_mount, ["true"], "web-abc",
        ex.nfs_mount_options,
    )  # fmt: skip
    script = argv[argv.index("-c") + 1]
    assert (
        "mount -t nfs4 -o nfsvers=4.1,hard 192.0.2.50:/exports/three-tier/www /srv/www"
        in script.splitlines()
    )
    assert "/sys/fs/nfs/net/nfs_client/identifier" in script  # a client owner per pod


def test_a_missing_mount_point_gets_a_tmpfs_over_its_nearest_existing_parent(
    tmp_path: Path,
) -> None:
    lines = s.share_mount_script(s.LocalDir("/c"), str(tmp_path / "a" / "b"))
    assert lines == [
        f"mount -t tmpfs -o mode=0755 tmpfs {tmp_path}",
        f"mkdir -p {tmp_path / 'a' / 'b'}",
        f"mount --bind /c {tmp_path / 'a' / 'b'}",
    ]
    assert s.share_mount_script(s.LocalDir("/c"), str(tmp_path)) == [f"mount --bind /c {tmp_path}"]
    with pytest.raises(s.ServiceError, match="below /"):
        s.share_mount_script(s.LocalDir("/c"), "/")


def test_seed_content_does_not_overwrite(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("edited")
    written = s.seed_content(tmp_path, {"www/index.html": "seed", "shop/index.html": "shop"})
    assert written == ["shop/index.html"]
    assert (tmp_path / "www" / "index.html").read_text() == "edited"
    assert (tmp_path / "shop" / "index.html").stat().st_mode & 0o777 == 0o644


def test_missing_packages_names_the_debian_package_of_each_missing_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(s.os.path, "exists", lambda path: path != "/usr/sbin/rpc.nfsd")
    monkeypatch.setattr(s.glob, "glob", lambda pattern: [] if "libphp" in pattern else ["x"])
    assert s.missing_packages() == ["nfs-kernel-server", "libapache2-mod-php"]
    monkeypatch.setattr(s.os.path, "exists", lambda path: True)
    monkeypatch.setattr(s.glob, "glob", lambda pattern: ["x"])
    assert s.missing_packages() == []


def test_mysql_volume_is_pre_bound_to_the_statefulsets_first_claim() -> None:
    from e2e.three_tier.scenario import ThreeTier

    ex = load()
    volume = ThreeTier(system=None, example=ex).mysql_volume()  # type: ignore[arg-type]
    claim = volume["spec"]["claimRef"]
    assert claim == {"namespace": ex.namespace, "name": "data-mysql-0"}
    assert volume["spec"]["storageClassName"] == ""  # binds to no provisioner's class
