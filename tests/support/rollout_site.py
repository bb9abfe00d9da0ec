"""A shop for rollout tests and benchmarks: a repository whose environment `dev` has three targets on
one real Docker Engine (three Compose projects), releases of busybox images pushed to the real registry,
promoted and decided with the `stella` CLI, and each target's agent run as `stella agent --once`.

`TEMPLATE`'s services are healthy unless the image's `/etc/marker` says "broken" (Compose `up --wait`
then fails): `Shop.release(name, marker)` makes a release that works, or one that fails its health
check, from the same template.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from reconciler.sign import generate_key
from tests.support.busybox_image import push_busybox
from tests.support.cli import Run, stella
from tests.support.dockerd import DockerDaemon
from tests.support.registry import RegistryServer
from tests.support.repos import commit_all, git, write_files

SECRET = "s3cr3t-value-never-written"
TARGETS = ("web-1", "web-2", "web-3")
# healthy unless the image's /etc/marker says "broken"; Compose `up --wait` fails on unhealthy
TEMPLATE = """\
services:
{% for name, c in components.items() %}
  {{ name | tojson }}:
    image: {{ c.pinned }}
    network_mode: none
    command: ["/bin/busybox", "sleep", "3600"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "/bin/busybox", "sh", "-c", "! /bin/busybox grep -q broken /etc/marker"]
      interval: 250ms
      retries: 2
    environment:
{% for key in secrets %}
      {{ key }}: {{ secret(key) }}
{% endfor %}
{% endfor %}
"""


class Shop:
    """A repository whose environment `dev` has three targets on one Engine (three Compose projects)."""

    def __init__(
        self,
        tmp: Path,
        registry: RegistryServer,
        engine: DockerDaemon,
        rollout: str,
        *,
        template: str = TEMPLATE,
        more: str = "",
    ) -> None:
        self.tmp, self.registry, self.engine = tmp, registry, engine
        self.root = tmp / "repo"
        self.keys = tmp / "keys"
        self.evidence_key = self.keys / "evidence.pem"
        generate_key(self.evidence_key)
        files: dict[str, str | bytes | None] = {
            "stella.yaml": "apiVersion: stella/v1\nkind: Settings\ntenant: shop\n",
            "environments/dev.yaml": (
                "apiVersion: stella/v1\nkind: Environment\nname: dev\n"
                "template: templates/shop.compose.yml.j2\n"
                "secrets: {DB_PASSWORD: env:DB_PASSWORD}\n"
                f"rollout: {rollout}\n"
                + more
                + "targets:\n"
                + "".join(
                    f"  - {{name: {t}, agent: docker, endpoint: '{engine.endpoint}', project: shop{t}}}\n"
                    for t in TARGETS
                )
            ),
            "templates/shop.compose.yml.j2": template,
            "trust/evidence-keys/ci.pub": self.keys.joinpath("evidence.pem.pub").read_bytes(),
        }
        for target in TARGETS:
            generate_key(self.keys / f"{target}.pem")
            files[f"trust/agent-keys/{target}.pub"] = self.keys.joinpath(f"{target}.pem.pub").read_bytes()
        write_files(self.root, files)
        git(self.root, "init", "-q", "-b", "main")
        git(self.root, "config", "user.name", "Requester")
        git(self.root, "config", "user.email", "requester@example.com")
        commit_all(self.root, "a shop with three targets")
        self.genesis = ""

    def release(self, name: str, marker: str, *, rollback_safe: bool = True) -> str:
        """Push an image, write release `name` of it and its promotion to dev, reconcile; the image."""
        image = push_busybox(self.registry.host, self.tmp / "images", "shop/web", name, marker=marker)
        write_files(
            self.root,
            {
                f"releases/{name}.yaml": (
                    f"apiVersion: stella/v1\nkind: Release\nname: {name}\n"
                    + ("" if rollback_safe else "rollbackSafe: false\n")
                    + f"components:\n  web: {{image: '{self.registry.host}/shop/web:{name}'}}\n"
                ),
                f"promotions/{name}--dev.yaml": (
                    f"apiVersion: stella/v1\nkind: Promotion\nrelease: {name}\nenvironment: dev\n"
                ),
            },
        )
        commit_all(self.root, f"release {name} to dev")
        run = self.stella("reconcile", "--once", "-o", "json")
        assert run.code == 0, run.out + run.err
        passed = json.loads(run.out)
        self.genesis = self.genesis or str(passed["ratification"])
        assert [d["decision"] for d in passed["decisions"]] == ["allow"], passed
        return image

    def stella(self, *args: str | Path) -> Run:
        return stella(*args, "--repo", self.root, env={"STELLA_SIGNING_KEY": str(self.evidence_key)})

    def agent_argv(self, target: str) -> list[str | Path]:
        """`stella agent …` for `target`, once, with JSON output (the arguments after `stella`)."""
        return [
            "agent",
            "--target",
            target,
            "--repo",
            self.root,
            "--key",
            self.keys / f"{target}.pem",
            "--state-dir",
            self.state(target),
            "--root",
            self.genesis,
            "--timeout",
            "20",
            "-o",
            "json",
        ]

    def agent(self, target: str) -> tuple[int, dict[str, object]]:
        run = stella(*self.agent_argv(target), env={"DB_PASSWORD": SECRET})
        assert run.code in (0, 1), run.out + run.err
        done: dict[str, object] = json.loads(run.out)
        return run.code, done

    def state(self, target: str) -> Path:
        return self.tmp / f"state-{target}"

    def running(self, target: str) -> list[str]:
        """The digests the target's project runs (running containers only)."""
        client = self.engine.client()
        try:
            found = client.containers.list(filters={"label": f"com.docker.compose.project=shop{target}"})
            return [c.attrs["Config"]["Image"].partition("@")[2] for c in found]
        finally:
            client.close()

    def record(self, evidence: object) -> dict[str, object]:
        shown = subprocess.run(
            [
                "git",
                "cat-file",
                "blob",
                f"stella/evidence:evidence/{str(evidence).removeprefix('sha256:')}.json",
            ],
            cwd=self.root,
            check=True,
            capture_output=True,
        ).stdout
        predicate: dict[str, object] = json.loads(shown)["predicate"]
        return predicate
