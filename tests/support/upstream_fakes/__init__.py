# SPDX-License-Identifier: Apache-2.0
"""Stand-ins for upstream source tarballs, so role tests run the real build path offline.

CI cannot reach upstream. Each directory here is a tiny project with the same build interface
as the upstream it replaces (``tstat/``: autogen.sh, configure, make, make install of a
libpcap program called ``tstat``). :func:`source_tarball` packs one the way the pinned
artifact is made (``git archive --prefix=NAME/ | gzip -n``: one top directory, reproducible
bytes), and :func:`artifact_env` puts it into a cache under the pinned file name with a
manifest override giving its SHA-256, so ``lookup('probeforge.testbed.artifact', NAME)`` hands
the roles the stand-in.

``PROBEFORGE_REAL_UPSTREAM=1`` makes :func:`artifact_env` use the real artifact instead, from
the cache named by ``PROBEFORGE_ARTIFACT_CACHE`` (or the default cache), verified against the
shipped manifest; tests skip if it is not there.
"""

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
REAL_UPSTREAM_ENV = "PROBEFORGE_REAL_UPSTREAM"


def real_upstream() -> bool:
    return os.environ.get(REAL_UPSTREAM_ENV, "") not in ("", "0")


def source_tarball(project: str, top: str, dest: Path) -> Path:
    """``HERE/project`` as ``dest`` (.tar.gz) with the single top directory ``top``; the same
    bytes every time (sorted names, owner root, mtime 0, executable bits kept)."""
    source = HERE / project
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(path: Path, name: str) -> None:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.size = len(data)
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                tar.addfile(info, io.BytesIO(data))

        add(source, f"{top}/")
        for path in sorted(source.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            add(path, f"{top}/{path.relative_to(source)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0,
                                               filename="") as gz:
        gz.write(raw.getvalue())
    return dest


def manifest_override(dest: Path, files: dict[str, Path]) -> Path:
    """A copy of the shipped manifest in which each artifact named in ``files`` pins that
    file's SHA-256 and size instead (its cache file name stays the pinned one)."""
    from artifacts import DEFAULT_MANIFEST, sha256_file

    data = yaml.safe_load(Path(DEFAULT_MANIFEST).read_text())
    for entry in data["artifacts"]:
        if entry["name"] in files:
            digest, size = sha256_file(files[entry["name"]])
            entry["sha256"] = digest
            entry["size"] = size
            entry["note"] = "test stand-in (tests/support/upstream_fakes), not upstream"
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def artifact_env(name: str, project: str, workdir: Path) -> dict[str, str]:
    """Environment for ansible-playbook in which artifact ``name`` resolves to the stand-in
    built from ``project`` (or, with PROBEFORGE_REAL_UPSTREAM=1, to the real one)."""
    from artifacts import ArtifactError, load_manifest, verified_path

    if real_upstream():
        try:
            path = verified_path(name)
        except ArtifactError as exc:
            pytest.skip(f"{REAL_UPSTREAM_ENV}=1 but the real {name} is not usable: {exc}")
        return {"PROBEFORGE_ARTIFACT_CACHE": str(Path(path).parent),
                "PROBEFORGE_ARTIFACT_MANIFEST": str(load_manifest().path)}
    artifact = load_manifest().get(name)
    cache = workdir / "artifact-cache"
    top = artifact.git.prefix.rstrip("/") if artifact.git else Path(artifact.file).stem
    tarball = source_tarball(project, top, cache / artifact.file)
    manifest = manifest_override(workdir / "manifest.yml", {name: tarball})
    return {"PROBEFORGE_ARTIFACT_CACHE": str(cache),
            "PROBEFORGE_ARTIFACT_MANIFEST": str(manifest)}
