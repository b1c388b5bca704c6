"""examples/three-tier/*.yaml as one typed value: what the scenario runs is what the example
declares (issue 20: the example is the single source, so it cannot drift from what is tested).

Pure: reads files, no cluster, no processes. ``load()`` parses the directory; every value a
scenario needs is a field of ``ThreeTierExample``. A missing object or field raises
``ExampleError`` naming the file and the object (``kind namespace/name``) and the field.
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "three-tier"

# the example's object names (the scenario's contract with the example)
HTTPD_CONFIGMAP = "web-httpd"
HTTPD_CONF_KEY = "httpd.conf"
SEED_CONFIGMAP = "web-seed"
SEED_VOLUME_MOUNT = "/seed"  # where the init container sees the seed ConfigMap
MYSQL_SECRET = "mysql"
MYSQL_INITDB_CONFIGMAP = "mysql-initdb"


class ExampleError(ValueError):
    """The example lacks something the scenario needs (names the file, object and field)."""


@dataclass(frozen=True)
class VirtualHost:
    """One ``<VirtualHost>`` of the httpd config: its names and document root (a path in
    the web container, under the content volume's mount)."""

    server_name: str
    aliases: tuple[str, ...]
    document_root: str


@dataclass(frozen=True)
class HealthCheck:
    """The RealServerPool's health check, as declared."""

    type: str
    port: int
    path: str
    host: str
    expected_status: int
    interval_seconds: float
    timeout_seconds: float
    rise: int
    fall: int


@dataclass(frozen=True)
class ThreeTierExample:
    """Everything of examples/three-tier/ a scenario runs; see the module docstring."""

    directory: Path
    namespace: str
    # tier 1: the VirtualServer and its pool
    virtual_server: str
    vip: str
    port: int
    target_port: int
    protocol: str
    scheduler: str
    forwarding: str
    persistence_timeout: int | None  # seconds; None: no persistence
    persistence_netmask: str | None
    pool: str
    pool_selector: Mapping[str, str]
    health_check: HealthCheck | None
    # tier 2: the web Deployment and its httpd config
    web_deployment: str
    web_replicas: int
    web_labels: Mapping[str, str]  # the pod template's labels
    web_port: int  # the httpd container's port (what the VirtualServer's targetPort names)
    web_env: Mapping[str, str]  # the httpd container's literal env values
    httpd_conf: str
    listen: tuple[str, ...]  # the config's Listen directives
    virtual_hosts: tuple[VirtualHost, ...]  # in order: the first is the default
    content_mount: str  # where the content volume (the NFS claim) is mounted in httpd
    healthz_path: str  # the URL path the httpd config serves the health check on
    healthz_body: str
    seed: Mapping[str, str]  # path relative to the content's root -> file content
    # tier 3: NFS
    persistent_volume: str
    claim: str
    nfs_server: str
    nfs_path: str
    nfs_mount_options: tuple[str, ...]
    # tier 3: MySQL
    mysql_service: str
    mysql_port: int
    mysql_statefulset: str
    mysql_replicas: int
    mysql_container_port: int
    database: str
    user: str
    password: str
    root_password: str
    schema_sql: str  # the init scripts of ConfigMap mysql-initdb, in key order

    @property
    def mysql_pod(self) -> str:
        """The first StatefulSet pod (``mysql-0``): the one the web pods' DB_HOST names."""
        return f"{self.mysql_statefulset}-0"

    def docroot(self, vhost: VirtualHost) -> str:
        """A virtual host's document root relative to the content's root."""
        return relative_to_mount(vhost.document_root, self.content_mount)


def relative_to_mount(path: str, mount: str) -> str:
    p, m = PurePosixPath(path), PurePosixPath(mount)
    if p == m:
        return "."
    if m not in p.parents:
        raise ExampleError(f"{path} is not under the content volume's mount {mount}")
    return str(p.relative_to(m))


@dataclass(frozen=True)
class _Doc:
    file: Path
    body: Mapping[str, object]

    @property
    def where(self) -> str:
        meta = _mapping(self.body.get("metadata"))
        ns = meta.get("namespace")
        name = meta.get("name", "?")
        return f"{self.file.name}: {self.body.get('kind')} {f'{ns}/' if ns else ''}{name}"


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _get(doc: _Doc, path: str, root: object = None) -> object:
    """The value at dotted ``path`` (list items by ``[key=value]``), or ExampleError."""
    node: object = doc.body if root is None else root
    for step in path.split("."):
        match = re.fullmatch(r"(\w+)\[(\w+)=(.+)\]", step)
        key = match.group(1) if match else step
        if not isinstance(node, Mapping) or key not in node:
            raise ExampleError(f"{doc.where}: missing {path}")
        node = node[key]
        if match:
            want_key, want = match.group(2), match.group(3)
            items = [i for i in node if isinstance(i, Mapping)] if isinstance(node, list) else []
            found = [i for i in items if str(i.get(want_key)) == want]
            if not found:
                raise ExampleError(f"{doc.where}: missing {path} (no item {want_key}={want})")
            node = found[0]
    return node


def _str(doc: _Doc, path: str, root: object = None) -> str:
    value = _get(doc, path, root)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ExampleError(f"{doc.where}: {path} is not a string")
    return str(value)


def _int(doc: _Doc, path: str, root: object = None) -> int:
    value = _get(doc, path, root)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExampleError(f"{doc.where}: {path} is not an integer")
    return value


def _list(doc: _Doc, path: str, root: object = None) -> list[Mapping[str, object]]:
    value = _get(doc, path, root)
    if not isinstance(value, list) or not all(isinstance(i, Mapping) for i in value):
        raise ExampleError(f"{doc.where}: {path} is not a list of maps")
    return value


def _number(doc: _Doc, where: Mapping[str, object], key: str, default: float) -> float:
    value = where.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExampleError(f"{doc.where}: {key} is not a number")
    return float(value)


def _labels(doc: _Doc, path: str) -> dict[str, str]:
    value = _get(doc, path)
    if not isinstance(value, Mapping) or not value:
        raise ExampleError(f"{doc.where}: {path} is not a non-empty map")
    return {str(k): str(v) for k, v in value.items()}


def read_docs(directory: Path) -> list[_Doc]:
    docs: list[_Doc] = []
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ExampleError(f"{directory}: no *.yaml files")
    for file in files:
        try:
            loaded = list(yaml.safe_load_all(file.read_text()))
        except yaml.YAMLError as exc:
            raise ExampleError(f"{file.name}: not YAML: {exc}") from exc
        docs.extend(_Doc(file, d) for d in loaded if isinstance(d, Mapping))
    return docs


class _Objects:
    def __init__(self, directory: Path, docs: list[_Doc]) -> None:
        self.directory = directory
        self.docs = docs

    def one(self, kind: str, name: str | None = None) -> _Doc:
        """The object of ``kind`` (named ``name``, or the only one of its kind)."""
        found = [
            d
            for d in self.docs
            if d.body.get("kind") == kind
            and (name is None or _mapping(d.body.get("metadata")).get("name") == name)
        ]
        what = f"{kind} {name}" if name else f"a {kind}"
        if not found:
            raise ExampleError(f"{self.directory}: no {what} in any *.yaml")
        if len(found) > 1:
            files = ", ".join(d.where for d in found)
            raise ExampleError(f"{self.directory}: more than one {what}: {files}")
        return found[0]


def load(directory: Path = EXAMPLE_DIR) -> ThreeTierExample:
    """Parse the example's manifests; see the module docstring."""
    objs = _Objects(directory, read_docs(directory))
    namespace = _str(objs.one("Namespace"), "metadata.name")

    vs = objs.one("VirtualServer")
    ports = _list(vs, "spec.ports")
    if len(ports) != 1:
        raise ExampleError(f"{vs.where}: the scenario expects exactly one port in spec.ports")
    port = ports[0]
    persistence = _mapping(_get(vs, "spec")).get("persistence")
    pool = objs.one("RealServerPool", _str(vs, "spec.poolRef.name"))
    check = _mapping(_get(pool, "spec")).get("healthCheck")

    deploy = objs.one("Deployment")
    pod = _get(deploy, "spec.template.spec")
    httpd = _get(deploy, "spec.template.spec.containers[name=httpd]")
    web_port = _int(deploy, "ports[name=http].containerPort", httpd)
    target = port.get("targetPort", _int(vs, "port", port))
    if isinstance(target, str):  # a named port: the container's
        target = _int(deploy, f"ports[name={target}].containerPort", httpd)
    if isinstance(target, bool) or not isinstance(target, int):
        raise ExampleError(f"{vs.where}: spec.ports[0].targetPort is not a port")
    content_mount = _str(deploy, "volumeMounts[name=content].mountPath", httpd)
    claim = _str(deploy, "volumes[name=content].persistentVolumeClaim.claimName", pod)
    env = {str(e["name"]): str(e["value"]) for e in _list(deploy, "env", httpd) if "value" in e}

    conf_map = objs.one("ConfigMap", HTTPD_CONFIGMAP)
    httpd_conf = _configmap_key(conf_map, HTTPD_CONF_KEY)
    vhosts = parse_virtual_hosts(httpd_conf)
    if not vhosts:
        raise ExampleError(f"{conf_map.where}: no <VirtualHost> in {HTTPD_CONF_KEY}")
    for vh in vhosts:
        relative_to_mount(vh.document_root, content_mount)  # under the NFS content
    healthz_path, healthz_file = _healthz_alias(conf_map, httpd_conf)
    healthz_body = _configmap_key(conf_map, PurePosixPath(healthz_file).name)

    seed = _seed(objs.one("ConfigMap", SEED_CONFIGMAP), deploy, pod, content_mount)

    pvc = objs.one("PersistentVolumeClaim", claim)
    pv = objs.one("PersistentVolume", _str(pvc, "spec.volumeName"))
    options = _mapping(pv.body.get("spec")).get("mountOptions") or []
    if not isinstance(options, list):
        raise ExampleError(f"{pv.where}: spec.mountOptions is not a list")

    sts = objs.one("StatefulSet")
    mysql = _get(sts, "spec.template.spec.containers[name=mysql]")
    svc = objs.one("Service", _str(sts, "spec.serviceName"))
    svc_port = _list(svc, "spec.ports")[0]
    secret = objs.one("Secret", MYSQL_SECRET)
    creds = secret_data(secret)
    initdb = objs.one("ConfigMap", MYSQL_INITDB_CONFIGMAP)
    scripts = _mapping(initdb.body.get("data"))
    sql = [str(scripts[k]) for k in sorted(scripts) if k.endswith(".sql")]
    if not sql:
        raise ExampleError(f"{initdb.where}: no *.sql in data")

    def cred(key: str) -> str:
        if key not in creds:
            raise ExampleError(f"{secret.where}: missing data/stringData {key}")
        return creds[key]

    return ThreeTierExample(
        directory=directory,
        namespace=namespace,
        virtual_server=_str(vs, "metadata.name"),
        vip=_str(vs, "spec.vip"),
        port=_int(vs, "port", port),
        target_port=target,
        protocol=str(port.get("protocol", "TCP")),
        scheduler=_str(vs, "spec.scheduler"),
        forwarding=_str(vs, "spec.forwarding"),
        persistence_timeout=_int(vs, "timeoutSeconds", persistence) if persistence else None,
        persistence_netmask=str(_mapping(persistence).get("netmask")) if persistence else None,
        pool=_str(pool, "metadata.name"),
        pool_selector=_labels(pool, "spec.selector.matchLabels"),
        health_check=_health_check(pool, check) if check else None,
        web_deployment=_str(deploy, "metadata.name"),
        web_replicas=_int(deploy, "spec.replicas"),
        web_labels=_labels(deploy, "spec.template.metadata.labels"),
        web_port=web_port,
        web_env=env,
        httpd_conf=httpd_conf,
        listen=tuple(re.findall(r"(?m)^\s*Listen\s+(\S+)", httpd_conf)),
        virtual_hosts=vhosts,
        content_mount=content_mount,
        healthz_path=healthz_path,
        healthz_body=healthz_body,
        seed=seed,
        persistent_volume=_str(pv, "metadata.name"),
        claim=claim,
        nfs_server=_str(pv, "spec.nfs.server"),
        nfs_path=_str(pv, "spec.nfs.path"),
        nfs_mount_options=tuple(str(o) for o in options),
        mysql_service=_str(svc, "metadata.name"),
        mysql_port=_int(svc, "port", svc_port),
        mysql_statefulset=_str(sts, "metadata.name"),
        mysql_replicas=_int(sts, "spec.replicas"),
        mysql_container_port=_int(sts, "ports[name=mysql].containerPort", mysql),
        database=cred("MYSQL_DATABASE"),
        user=cred("MYSQL_USER"),
        password=cred("MYSQL_PASSWORD"),
        root_password=cred("MYSQL_ROOT_PASSWORD"),
        schema_sql="\n".join(sql),
    )


def _configmap_key(doc: _Doc, key: str) -> str:
    data = _mapping(doc.body.get("data"))
    if key not in data:
        raise ExampleError(f"{doc.where}: missing data.{key}")
    return str(data[key])


def secret_data(doc: _Doc) -> dict[str, str]:
    """A Secret's values as the API server would hold them: ``data`` base64-decoded, then
    ``stringData`` (which wins, as it does on write)."""
    out: dict[str, str] = {}
    for key, value in _mapping(doc.body.get("data")).items():
        try:
            out[key] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ExampleError(f"{doc.where}: data.{key} is not base64 text: {exc}") from exc
    out.update({k: str(v) for k, v in _mapping(doc.body.get("stringData")).items()})
    return out


def _health_check(doc: _Doc, check: object) -> HealthCheck:
    c = _mapping(check)
    return HealthCheck(
        type=_str(doc, "type", c),
        port=_int(doc, "port", c),
        path=str(c.get("path", "/")),
        host=str(c.get("host", "")),
        expected_status=int(_number(doc, c, "expectedStatus", 200)),
        interval_seconds=_number(doc, c, "intervalSeconds", 0),
        timeout_seconds=_number(doc, c, "timeoutSeconds", 0),
        rise=int(_number(doc, c, "riseThreshold", 1)),
        fall=int(_number(doc, c, "fallThreshold", 1)),
    )


_VHOST = re.compile(r"(?ims)^\s*<VirtualHost\s+([^>]*)>(.*?)^\s*</VirtualHost>")


def parse_virtual_hosts(conf: str) -> tuple[VirtualHost, ...]:
    """The ``<VirtualHost>`` blocks of an httpd config (ServerName, ServerAlias,
    DocumentRoot), in order. A block without ServerName or DocumentRoot is an error."""
    out = []
    for match in _VHOST.finditer(conf):
        body = match.group(2)
        name = _directive(body, "ServerName")
        root = _directive(body, "DocumentRoot")
        if not name or not root:
            raise ExampleError(f"<VirtualHost {match.group(1)}> lacks ServerName or DocumentRoot")
        aliases = tuple(
            a for line in re.findall(r"(?im)^\s*ServerAlias\s+(.+)$", body) for a in line.split()
        )
        out.append(VirtualHost(server_name=name, aliases=aliases, document_root=root))
    return tuple(out)


def _directive(body: str, name: str) -> str | None:
    m = re.search(rf"(?im)^\s*{name}\s+(\S+)", body)
    return m.group(1).strip('"') if m else None


def _healthz_alias(doc: _Doc, conf: str) -> tuple[str, str]:
    """The health check's ``Alias /path /file`` (served from the ConfigMap, not the share)."""
    for path, target in re.findall(r"(?im)^\s*Alias\s+(\S+)\s+(\S+)", conf):
        if "healthz" in path:
            return path.strip('"'), target.strip('"')
    raise ExampleError(f"{doc.where}: no Alias for the health check (/healthz) in the config")


def _seed(seed: _Doc, deploy: _Doc, pod: object, content_mount: str) -> dict[str, str]:
    """What the init container copies from the seed ConfigMap onto the content volume:
    ``cp [-n] /seed/KEY DEST`` in its command, DEST under the content's mount."""
    data = _mapping(seed.body.get("data"))
    inits = _mapping(pod).get("initContainers") or []
    commands = [
        " ".join(str(a) for k in ("command", "args") for a in _strings(c.get(k)))
        for c in (inits if isinstance(inits, list) else [])
        if isinstance(c, Mapping)
    ]
    out: dict[str, str] = {}
    for command in commands:
        words = shlex.split(command.replace("&&", " && "))
        for i, word in enumerate(words[:-2]):
            if word != "cp":
                continue
            args = [w for w in words[i + 1 : i + 4] if not w.startswith("-")][:2]
            if len(args) < 2 or not args[0].startswith(SEED_VOLUME_MOUNT + "/"):
                continue
            key = args[0].removeprefix(SEED_VOLUME_MOUNT + "/")
            if key not in data:
                raise ExampleError(
                    f"{seed.where}: missing data.{key} (the init container of "
                    f"{deploy.where} copies it)"
                )
            out[relative_to_mount(args[1], content_mount)] = str(data[key])
    if not out:
        raise ExampleError(
            f"{deploy.where}: no init container copies {SEED_VOLUME_MOUNT}/<key> onto "
            f"{content_mount}"
        )
    return out


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
