"""drift.py: the config hash over real files, the labels of a lock's services, comparing what runs with a
lock (every kind, the order, replicas); and the render allowance of `${STELLA_STATE_DIR}` bind sources."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from stella_docker.compose import labels_override

from reconciler.api import CONFIG_FILES_LABEL, CONFIG_LABEL, RunningContainer
from reconciler.drift import KINDS, DriftItem, compare, config_hash, config_labels
from reconciler.render import STATE_DIR_VAR, RenderError, check, render
from tests.unit.test_render import RELEASE, T, _at, _host, environment

WEB = "sha256:" + "1" * 64
API = "sha256:" + "2" * 64
OTHER = "sha256:" + "9" * 64
EMPTY = "sha256:" + hashlib.sha256(b"[]").hexdigest()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- the config hash ------------------------------------------------------------------------------


def test_config_hash_is_over_sorted_paths_and_content_digests(tmp_path: Path) -> None:
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    a.write_bytes(b"one\n")
    b.write_bytes(b"two\n")
    entries = [[str(a), _sha(b"one\n")], [str(b), _sha(b"two\n")]]
    expected = _sha(_json(entries).encode())
    assert config_hash([str(b), str(a), str(a)]) == expected
    assert config_hash([]) == EMPTY
    before = config_hash([str(a)])
    a.write_bytes(b"changed\n")
    assert config_hash([str(a)]) != before


def test_config_hash_of_a_directory_covers_every_file_under_it(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "sub").mkdir(parents=True)
    (conf / "z.conf").write_bytes(b"z")
    (conf / "sub" / "a.conf").write_bytes(b"a")
    (conf / "link").symlink_to(conf / "sub")
    entries = sorted(
        [
            [str(conf / "link"), f"symlink:{conf / 'sub'}"],
            [str(conf / "sub" / "a.conf"), _sha(b"a")],
            [str(conf / "z.conf"), _sha(b"z")],
        ]
    )
    assert config_hash([str(conf)]) == _sha(_json(entries).encode())
    before = config_hash([str(conf)])
    (conf / "sub" / "new.conf").write_bytes(b"")
    assert config_hash([str(conf)]) != before


def test_config_hash_marks_missing_unusual_and_unreadable_files(tmp_path: Path) -> None:
    missing, empty, fifo = tmp_path / "missing", tmp_path / "empty", tmp_path / "fifo"
    empty.write_bytes(b"")
    os.mkfifo(fifo)  # hashing must not block on it
    assert config_hash([str(missing)]) == _sha(_json([[str(missing), "missing"]]).encode())
    assert config_hash([str(missing)]) != config_hash([str(empty)])
    assert config_hash([str(fifo)]) == _sha(_json([[str(fifo), "not-a-file"]]).encode())
    below = empty / "below"  # ENOTDIR: missing too
    assert config_hash([str(below)]) == _sha(_json([[str(below), "missing"]]).encode())


# --- the labels of a lock ---------------------------------------------------------------------------


def _lock(services: dict[str, Any]) -> bytes:
    return yaml.safe_dump({"services": services}).encode()


def test_config_labels_hash_what_each_service_mounts_from_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "config" / "api.d").mkdir(parents=True)
    (state / "config" / "web.conf").write_bytes(b"listen 80\n")
    (state / "config" / "api.d" / "api.conf").write_bytes(b"threads 4\n")
    outside = tmp_path / "outside.conf"
    outside.write_bytes(b"not covered\n")
    lock = _lock(
        {
            "web": {
                "image": f"web@{WEB}",
                "volumes": [
                    "${STELLA_STATE_DIR}/config/web.conf:/etc/web.conf:ro",
                    "data:/data",  # a named volume
                    "/cache",  # an anonymous volume
                    f"{outside}:/etc/outside.conf",  # a host path outside the state dir
                    "${STELLA_STATE_DIR}/config/../config/web.conf:/again",  # the same file
                ],
            },
            "api": {
                "image": f"api@{API}",
                "volumes": [
                    {"type": "bind", "source": "${STELLA_STATE_DIR}/config/api.d", "target": "/etc/api"},
                    {"type": "bind", "source": f"{state}/missing.conf", "target": "/etc/missing"},
                    {"type": "volume", "source": "cache", "target": "/cache"},
                    {"type": "bind", "source": f"{state}/../outside.conf", "target": "/etc/o"},
                ],
            },
            "worker": {"image": f"worker@{API}"},
        }
    )
    labels = config_labels(lock, state)
    web_files = [f"{state}/config/web.conf"]
    api_files = [f"{state}/config/api.d", f"{state}/missing.conf"]
    assert labels == {
        "web": {CONFIG_LABEL: config_hash(web_files), CONFIG_FILES_LABEL: _json(web_files)},
        "api": {CONFIG_LABEL: config_hash(api_files), CONFIG_FILES_LABEL: _json(api_files)},
        "worker": {CONFIG_LABEL: EMPTY, CONFIG_FILES_LABEL: "[]"},
    }
    before = labels["web"][CONFIG_LABEL]
    (state / "config" / "web.conf").write_bytes(b"listen 8080\n")
    after = config_labels(lock, state)
    assert after["web"][CONFIG_LABEL] != before and after["api"] == labels["api"]


def test_the_labels_override_compose_file_escapes_dollars() -> None:
    override = json.loads(
        labels_override({"web": {CONFIG_LABEL: "sha256:1", CONFIG_FILES_LABEL: '["/s/$x"]'}})
    )
    assert override == {
        "services": {"web": {"labels": {CONFIG_FILES_LABEL: '["/s/$$x"]', CONFIG_LABEL: "sha256:1"}}}
    }


# --- comparing ------------------------------------------------------------------------------------

LOCK = _lock({"web": {"image": f"reg/web@{WEB}"}, "api": {"image": f"reg/api@{API}"}})
LABELS = {CONFIG_LABEL: EMPTY, CONFIG_FILES_LABEL: "[]"}
FILES_LABEL = f"{CONFIG_FILES_LABEL}: a JSON list of paths the service mounts"


def running(
    service: str,
    container: str,
    digest: str | None,
    state: str = "running",
    labels: dict[str, str] | None = None,
) -> RunningContainer:
    image = f"reg/{service}@{digest}" if digest else "sha256:" + "f" * 64
    return RunningContainer(service, container, image, digest, state, LABELS if labels is None else labels)


IN_SYNC = [running("web", "c-web", WEB), running("api", "c-api", API)]

COMPARED = [
    pytest.param(IN_SYNC, [], id="in-sync"),
    pytest.param(
        [running("web", "c-web", WEB)],
        [DriftItem("t1", "api", "missing", f"reg/api@{API}", None)],
        id="missing",
    ),
    pytest.param(
        [*IN_SYNC, running("cron", "c-cron", OTHER, "exited")],
        [DriftItem("t1", "cron", "extra", None, f"{OTHER} (exited)", "c-cron")],
        id="extra-unknown-service",
    ),
    pytest.param(
        [*IN_SYNC, running("", "c-bare", None)],
        [DriftItem("t1", "", "extra", None, f"{'sha256:' + 'f' * 64} (running)", "c-bare")],
        id="extra-without-service-label",
    ),
    pytest.param(
        [*IN_SYNC, running("web", "a-by-hand", OTHER)],
        [DriftItem("t1", "web", "extra", None, f"{OTHER} (running)", "a-by-hand")],
        id="extra-second-container-of-a-service",
    ),
    pytest.param(
        [running("web", "c-web", OTHER), running("api", "c-api", API)],
        [DriftItem("t1", "web", "digest", WEB, OTHER, "c-web")],
        id="digest",
    ),
    pytest.param(
        [running("web", "c-web", None), running("api", "c-api", API)],
        [DriftItem("t1", "web", "digest", WEB, None, "c-web")],
        id="digest-unknown",
    ),
    pytest.param(
        [running("web", "c-web", WEB, "exited"), running("api", "c-api", API)],
        [DriftItem("t1", "web", "stopped", "running", "exited", "c-web")],
        id="stopped",
    ),
    pytest.param(
        [running("web", "c-web", WEB, labels={}), running("api", "c-api", API)],
        [DriftItem("t1", "web", "config", f"a {CONFIG_LABEL} label", None, "c-web")],
        id="config-not-labelled",
    ),
    pytest.param(
        [running("web", "c-web", WEB, labels={CONFIG_LABEL: OTHER, CONFIG_FILES_LABEL: "[]"}), IN_SYNC[1]],
        [DriftItem("t1", "web", "config", EMPTY, OTHER, "c-web")],
        id="config-changed",
    ),
    pytest.param(
        [running("web", "c-web", WEB, labels={CONFIG_LABEL: EMPTY, CONFIG_FILES_LABEL: "x"}), IN_SYNC[1]],
        [DriftItem("t1", "web", "config", FILES_LABEL, "x", "c-web")],
        id="config-files-label-unreadable",
    ),
    pytest.param(
        [running("web", "c-web", WEB, labels={CONFIG_LABEL: EMPTY, CONFIG_FILES_LABEL: '["/"]'}), IN_SYNC[1]],
        [DriftItem("t1", "web", "config", FILES_LABEL, '["/"]', "c-web")],
        id="config-files-label-lists-what-the-lock-does-not-mount",
    ),
    pytest.param(
        [
            running("web", "c-web", OTHER, "exited", labels={}),
            running("zz", "c-zz", WEB),
            running("api", "c-api2", API),
            running("api", "c-api1", API),
        ],
        [
            DriftItem("t1", "api", "extra", None, f"{API} (running)", "c-api2"),
            DriftItem("t1", "web", "digest", WEB, OTHER, "c-web"),
            DriftItem("t1", "web", "stopped", "running", "exited", "c-web"),
            DriftItem("t1", "web", "config", f"a {CONFIG_LABEL} label", None, "c-web"),
            DriftItem("t1", "zz", "extra", None, f"{WEB} (running)", "c-zz"),
        ],
        id="several-in-order",
    ),
]


@pytest.mark.parametrize(("containers", "items"), COMPARED)
def test_compare(containers: list[RunningContainer], items: list[DriftItem]) -> None:
    assert compare("t1", LOCK, containers) == items
    assert compare("t1", LOCK, list(reversed(containers))) == items  # the engine's order does not matter


def test_compare_recomputes_the_hash_of_the_files_a_container_lists(tmp_path: Path) -> None:
    state = tmp_path / "state"
    conf, etc = state / "config" / "web.conf", tmp_path / "etc.conf"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(b"v1\n")
    etc.write_bytes(b"e\n")
    lock = _lock(
        {
            "web": {
                "image": f"reg/web@{WEB}",
                "volumes": ["${STELLA_STATE_DIR}/config/web.conf:/etc/web.conf", f"{etc}:/etc/etc.conf"],
            },
            "api": {"image": f"reg/api@{API}"},
        }
    )
    labels = config_labels(lock, state)
    assert labels["web"][CONFIG_FILES_LABEL] == _json([str(conf)])  # etc.conf is not in the state dir
    containers = [running("web", "c-web", WEB, labels=labels["web"]), running("api", "c-api", API)]
    assert compare("t1", lock, containers) == []
    conf.write_bytes(b"v2\n")
    assert compare("t1", lock, containers) == [
        DriftItem("t1", "web", "config", config_hash([str(conf)]), labels["web"][CONFIG_LABEL], "c-web")
    ]
    # a label may list only what the lock mounts (the state directory's part, or a path as written)
    listed = {CONFIG_LABEL: EMPTY, CONFIG_FILES_LABEL: _json(["/elsewhere/config/web.conf", str(etc)])}
    calls: list[list[str]] = []

    def hasher(paths: list[str]) -> str:  # once per distinct list of files
        calls.append(list(paths))
        return EMPTY

    twice = [running("web", "w1", WEB, labels=listed), running("api", "a1", API), running("api", "a2", API)]
    assert compare("t1", lock, twice, hasher=hasher) == [
        DriftItem("t1", "api", "extra", None, f"{API} (running)", "a2")
    ]
    assert calls == [[], ["/elsewhere/config/web.conf", str(etc)]]  # services in order: api, web
    for wrong in (["/etc/shadow"], ["/"], [str(state / "config")]):
        bad = {CONFIG_LABEL: EMPTY, CONFIG_FILES_LABEL: _json(wrong)}
        [item] = compare("t1", lock, [running("web", "w1", WEB, labels=bad), running("api", "a1", API)])
        assert (item.kind, item.expected, item.actual) == ("config", FILES_LABEL, _json(wrong))


def test_compare_counts_replicas_and_leaves_profiled_services_out() -> None:
    lock = _lock(
        {
            "web": {"image": f"reg/web@{WEB}", "deploy": {"replicas": 2}},
            "api": {"image": f"reg/api@{API}", "scale": 3},
            "debug": {"image": f"reg/web@{WEB}", "profiles": ["debug"]},
        }
    )
    containers = [running("web", "w1", WEB), running("web", "w2", WEB), running("api", "a1", API)]
    assert compare("t1", lock, containers) == [
        DriftItem("t1", "api", "missing", f"reg/api@{API}", "1 of 3 containers"),
    ]
    assert compare("t1", lock, [*containers, running("debug", "d1", WEB)])[-1] == DriftItem(
        "t1", "debug", "extra", None, f"{WEB} (running)", "d1"
    )


def test_a_drift_item_as_json() -> None:
    item = DriftItem("t1", "web", "digest", WEB, OTHER, "c-web")
    assert item.as_json() == {
        "target": "t1",
        "service": "web",
        "kind": "digest",
        "expected": WEB,
        "actual": OTHER,
        "container": "c-web",
    }
    assert KINDS == ("missing", "extra", "digest", "stopped", "config")


# --- render: `${STELLA_STATE_DIR}` bind sources ----------------------------------------------------

STATE_ALLOWED = [
    pytest.param("    volumes: ['${STELLA_STATE_DIR}/config/web.conf:/etc/web.conf:ro']\n", id="short"),
    pytest.param(
        "    volumes:\n    - {type: bind, source: '${STELLA_STATE_DIR}/config', target: /etc/web}\n",
        id="long",
    ),
    pytest.param("    volumes: ['${STELLA_STATE_DIR}/a/./b$$c:/x']\n", id="dot-and-literal-dollar"),
]


@pytest.mark.parametrize("web", STATE_ALLOWED)
def test_a_bind_from_the_state_dir_needs_no_host_access(web: str) -> None:
    env = environment()  # no hostPaths
    assert env.hostAccess.hostPaths == []
    data = render(RELEASE, env, _host(web), template_path=T)
    check(data, RELEASE, environment=env)
    check(data, RELEASE)
    assert f"${{{STATE_DIR_VAR}}}/" in data.decode()


WHOLE = "the agent's whole state directory: only a path inside it may be bound (${STELLA_STATE_DIR}/config/…)"
ONLY_BIND_SOURCE = "${STELLA_STATE_DIR} may only begin the source of a bind mount (${STELLA_STATE_DIR}/<path>:<container path>)"
STATE_REFUSED = [
    pytest.param(
        "    volumes: ['${STELLA_STATE_DIR}:/x']\n",
        _at(10, f"service 'web': 'volumes' binds '${{STELLA_STATE_DIR}}', {WHOLE}"),
        id="alone",
    ),
    pytest.param(
        "    volumes: ['${STELLA_STATE_DIR}//.:/x']\n",
        _at(10, f"service 'web': 'volumes' binds '${{STELLA_STATE_DIR}}//.', {WHOLE}"),
        id="alone-spelt-otherwise",
    ),
    pytest.param(
        "    volumes: ['${STELLA_STATE_DIR}/config/../..:/x']\n",
        _at(
            10,
            "service 'web': 'volumes' binds '${STELLA_STATE_DIR}/config/../..': '..' may not step out of "
            "the agent's state directory (${STELLA_STATE_DIR})",
        ),
        id="dot-dot",
    ),
    pytest.param(
        "    volumes:\n    - {type: bind, source: '${STELLA_STATE_DIR}/../etc', target: /x}\n",
        _at(
            11,
            "service 'web': 'volumes' binds '${STELLA_STATE_DIR}/../etc': '..' may not step out of "
            "the agent's state directory (${STELLA_STATE_DIR})",
        ),
        id="dot-dot-long",
    ),
    pytest.param(
        "    volumes: ['${STELLA_STATE_DIR}etc:/x']\n",
        _at(
            10,
            "service 'web': 'volumes' binds '${STELLA_STATE_DIR}etc': write ${STELLA_STATE_DIR}/<path inside "
            "the agent's state directory>",
        ),
        id="no-slash",
    ),
    pytest.param(
        "    volumes: ['${STELLA_STATE_DIR}/${DB_PASSWORD}:/x']\n",
        _at(
            10,
            "service 'web': 'volumes' binds '${STELLA_STATE_DIR}/${DB_PASSWORD}': after ${STELLA_STATE_DIR} "
            "the path must be written out (no interpolation)",
        ),
        id="more-interpolation",
    ),
    pytest.param(
        "    volumes: ['${STELLA_STATE_DIR}/a:/${DB_PASSWORD}']\n",
        _at(
            10,
            "service 'web': 'volumes' '${STELLA_STATE_DIR}/a:/${DB_PASSWORD}': the container path and mode "
            "must be written out (no interpolation)",
        ),
        id="interpolated-target",
    ),
    pytest.param(
        "    volumes: ['${STELLA_STATE_DIR}/a']\n",
        _at(
            10,
            "service 'web': 'volumes' binds '${STELLA_STATE_DIR}/a' to no path in the container (write SRC:DST)",
        ),
        id="no-target",
    ),
    pytest.param(
        "    volumes:\n    - {type: volume, source: '${STELLA_STATE_DIR}/a', target: /x}\n",
        _at(
            11,
            "service 'web': 'volumes': only a bind mount may take its source from ${STELLA_STATE_DIR} (type: bind)",
        ),
        id="not-a-bind",
    ),
    pytest.param(
        "    environment: {WHERE: '${STELLA_STATE_DIR}/a'}\n",
        _at(10, ONLY_BIND_SOURCE),
        id="in-environment",
    ),
    pytest.param(
        "    volumes: ['/srv/${STELLA_STATE_DIR}:/x']\n",
        _at(10, ONLY_BIND_SOURCE),
        id="not-at-the-start",
    ),
]


@pytest.mark.parametrize(("web", "message"), STATE_REFUSED)
def test_state_dir_binds_are_refused_unless_inside_it(web: str, message: str) -> None:
    with pytest.raises(RenderError) as caught:
        render(RELEASE, environment(), _host(web), template_path=T)
    assert (caught.value.file, caught.value.line, caught.value.message) == (T, None, message)


def test_a_secret_named_like_the_state_dir_does_not_widen_the_allowance() -> None:
    env = environment(secrets={"STELLA_STATE_DIR": "env:X"})
    with pytest.raises(RenderError) as caught:
        render(RELEASE, env, _host("    environment: {WHERE: '${STELLA_STATE_DIR}'}\n"), template_path=T)
    assert caught.value.message == _at(10, ONLY_BIND_SOURCE)
