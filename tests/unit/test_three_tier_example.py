"""e2e/three_tier/example.py: examples/three-tier/ parsed into what the three-tier scenario
runs (issue 20), against the real files; broken copies for the errors."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from e2e.three_tier.example import (
    EXAMPLE_DIR,
    ExampleError,
    ThreeTierExample,
    load,
    parse_virtual_hosts,
)


@pytest.fixture(scope="module")
def example() -> ThreeTierExample:
    return load()


def test_tier1_the_virtual_server_and_its_pool(example: ThreeTierExample) -> None:
    assert example.namespace == "three-tier"
    assert (example.vip, example.port, example.target_port) == ("192.0.2.20", 80, 8080)
    assert (example.protocol, example.scheduler, example.forwarding) == ("TCP", "wlc", "masquerade")
    assert (example.persistence_timeout, example.persistence_netmask) == (1800, "255.255.255.255")
    assert example.pool == "web"
    assert example.pool_selector == {"app": "web", "tier": "frontend"}
    hc = example.health_check
    assert hc is not None
    assert (hc.type, hc.port, hc.path, hc.host, hc.expected_status) == (
        "http",
        8080,
        "/healthz",
        "www.example.com",
        200,
    )
    assert (hc.interval_seconds, hc.timeout_seconds, hc.rise, hc.fall) == (2, 1, 2, 3)


def test_tier2_the_web_pods_select_into_the_pool_on_the_target_port(
    example: ThreeTierExample,
) -> None:
    assert (example.web_deployment, example.web_replicas) == ("web", 3)
    assert example.pool_selector.items() <= example.web_labels.items()
    assert example.web_port == example.target_port == example.health_check.port  # type: ignore[union-attr]
    assert example.listen == (str(example.web_port),)
    assert (
        example.web_env["DB_HOST"] == f"{example.mysql_pod}.{example.mysql_service}.three-tier.svc"
    )


def test_tier2_virtual_hosts_and_content(example: ThreeTierExample) -> None:
    assert [(v.server_name, example.docroot(v)) for v in example.virtual_hosts] == [
        ("www.example.com", "www.example.com"),
        ("shop.example.com", "shop.example.com"),
    ]
    assert example.content_mount == "/srv/www"
    assert (example.healthz_path, example.healthz_body) == ("/healthz", "ok\n")
    assert sorted(example.seed) == [
        "shop.example.com/index.html",
        "www.example.com/index.html",
        "www.example.com/index.php",
        "www.example.com/message.txt",
    ]
    page = example.seed["www.example.com/index.php"]
    # what the scenario reads from the page, and where it gets the database from
    for needle in ("X-Server", "X-Visit", "X-Visits", "X-Session-Visits", "message.txt"):
        assert needle in page
    for var in ("POD_NAME", "DB_HOST", "DB_NAME", "DB_USER", "DB_PASSWORD"):
        assert f"getenv('{var}')" in page
    assert "INSERT INTO visits" in page


def test_tier3_nfs_and_mysql(example: ThreeTierExample) -> None:
    assert (example.persistent_volume, example.claim) == ("three-tier-web-content", "web-content")
    assert (example.nfs_server, example.nfs_path) == ("192.0.2.50", "/exports/three-tier/www")
    assert example.nfs_mount_options == ("nfsvers=4.1", "hard")
    assert (example.mysql_service, example.mysql_port, example.mysql_container_port) == (
        "mysql",
        3306,
        3306,
    )
    assert (example.mysql_statefulset, example.mysql_replicas, example.mysql_pod) == (
        "mysql",
        1,
        "mysql-0",
    )
    assert (example.database, example.user, example.password) == ("web", "web", "change-me-web")
    assert example.root_password == "change-me-root"
    assert "CREATE TABLE IF NOT EXISTS visits" in example.schema_sql


def test_virtual_hosts_parse_aliases_and_quotes() -> None:
    conf = """
    <VirtualHost *:80>
        ServerName a.test
        ServerAlias b.test c.test
        DocumentRoot "/srv/a"
    </VirtualHost>
    <virtualhost 10.0.0.1:80>
        servername d.test
        documentroot /srv/d
    </virtualhost>
    """
    (a, d) = parse_virtual_hosts(conf)
    assert (a.server_name, a.aliases, a.document_root) == ("a.test", ("b.test", "c.test"), "/srv/a")
    assert (d.server_name, d.aliases, d.document_root) == ("d.test", (), "/srv/d")
    with pytest.raises(ExampleError, match="lacks ServerName"):
        parse_virtual_hosts("<VirtualHost *:80>\nDocumentRoot /x\n</VirtualHost>\n")


# -- errors name the file, the object and the field ---------------------------------------------


def broken_copy(tmp_path: Path, file: str, edit: object) -> Path:
    """The example copied, with ``edit(docs)`` applied to ``file``'s documents."""
    out = tmp_path / "three-tier"
    shutil.copytree(EXAMPLE_DIR, out)
    docs = list(yaml.safe_load_all((out / file).read_text()))
    edit(docs)  # type: ignore[operator]
    (out / file).write_text(yaml.safe_dump_all(docs))
    return out


def by(docs: list[dict], kind: str, name: str | None = None) -> dict:
    return next(
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    )


def test_missing_vip_names_file_object_and_field(tmp_path: Path) -> None:
    copy = broken_copy(
        tmp_path, "40-lvs.yaml", lambda ds: by(ds, "VirtualServer")["spec"].pop("vip")
    )
    with pytest.raises(
        ExampleError, match=r"40-lvs.yaml: VirtualServer three-tier/web: missing spec.vip"
    ):
        load(copy)


def test_missing_secret_key(tmp_path: Path) -> None:
    copy = broken_copy(
        tmp_path, "20-mysql.yaml", lambda ds: by(ds, "Secret")["stringData"].pop("MYSQL_PASSWORD")
    )
    with pytest.raises(
        ExampleError,
        match=r"20-mysql.yaml: Secret three-tier/mysql: missing data/stringData MYSQL_PASSWORD",
    ):
        load(copy)


def test_secret_data_is_base64_decoded_and_string_data_wins(tmp_path: Path) -> None:
    def edit(ds: list[dict]) -> None:
        secret = by(ds, "Secret")
        secret["data"] = {
            "MYSQL_USER": base64.b64encode(b"from-data").decode(),
            "MYSQL_PASSWORD": base64.b64encode(b"overridden").decode(),
        }
        del secret["stringData"]["MYSQL_USER"]

    example = load(broken_copy(tmp_path, "20-mysql.yaml", edit))
    assert (example.user, example.password) == ("from-data", "change-me-web")

    bad = broken_copy(
        tmp_path / "bad", "20-mysql.yaml", lambda ds: by(ds, "Secret").update(data={"X": "%%%"})
    )
    with pytest.raises(ExampleError, match=r"Secret three-tier/mysql: data.X is not base64"):
        load(bad)


def test_missing_configmap(tmp_path: Path) -> None:
    copy = broken_copy(
        tmp_path, "20-mysql.yaml", lambda ds: ds.remove(by(ds, "ConfigMap", "mysql-initdb"))
    )
    with pytest.raises(ExampleError, match=r"no ConfigMap mysql-initdb in any \*.yaml"):
        load(copy)


def test_seed_key_the_init_container_copies_must_exist(tmp_path: Path) -> None:
    copy = broken_copy(
        tmp_path,
        "30-web.yaml",
        lambda ds: by(ds, "ConfigMap", "web-seed")["data"].pop("www-index.php"),
    )
    with pytest.raises(
        ExampleError,
        match=r"30-web.yaml: ConfigMap three-tier/web-seed: missing data.www-index.php",
    ):
        load(copy)


def test_document_root_outside_the_content_volume(tmp_path: Path) -> None:
    def edit(ds: list[dict]) -> None:
        cm = by(ds, "ConfigMap", "web-httpd")
        cm["data"]["httpd.conf"] = cm["data"]["httpd.conf"].replace(
            '"/srv/www/shop.example.com"', "/var/www/shop"
        )

    with pytest.raises(ExampleError, match=r"/var/www/shop is not under .* /srv/www"):
        load(broken_copy(tmp_path, "30-web.yaml", edit))


def test_missing_container_port(tmp_path: Path) -> None:
    def edit(ds: list[dict]) -> None:
        by(ds, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"] = []

    with pytest.raises(
        ExampleError,
        match=r"30-web.yaml: Deployment three-tier/web: missing ports\[name=http\].containerPort",
    ):
        load(broken_copy(tmp_path, "30-web.yaml", edit))


@pytest.mark.skipif(shutil.which("php") is None, reason="no php here (Debian: php-cli)")
def test_the_page_is_valid_php(example: ThreeTierExample, tmp_path: Path) -> None:
    page = tmp_path / "index.php"
    page.write_text(example.seed["www.example.com/index.php"])
    r = subprocess.run(["php", "-l", str(page)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
