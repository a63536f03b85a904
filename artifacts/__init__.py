# SPDX-License-Identifier: Apache-2.0
"""probeforge's artifact cache: every file downloaded from upstream, pinned and verified on use.

The manifest (``manifest.yml`` here) pins each file's URL and SHA-256; the
cache is a flat directory of those files that can be filled online
(``probeforge-artifacts fetch``), from a mirror, or by hand for an air-gapped
testbed, and is hashed again every time a build takes a file from it.
"""

from artifacts.cache import (
    CACHE_ENV,
    CORRUPT,
    MISSING,
    PRESENT,
    Cache,
    Status,
    resolve_cache_dir,
    sha256_file,
)
from artifacts.errors import (
    ArtifactError,
    CacheError,
    FetchError,
    ManifestError,
    UnknownArtifactError,
)
from artifacts.manifest import (
    DEFAULT_MANIFEST,
    MANIFEST_ENV,
    Artifact,
    GitSource,
    Manifest,
    load_manifest,
    parse_manifest,
    resolve_manifest_path,
)
from artifacts.store import MIRROR_ENV, Fetched, add, fetch, resolve_mirrors


def verified_path(name: str, cache: str | None = None, manifest: str | None = None) -> str:
    """The absolute path of artifact ``name`` in the cache, hashed just now.

    ``cache`` and ``manifest`` take precedence over their environment variables,
    which take precedence over the defaults: the command line and the Ansible
    lookup plugin resolve them the same way through this function.
    """
    loaded = load_manifest(manifest)
    return str(Cache(resolve_cache_dir(cache)).verified_path(loaded.get(name)))


__all__ = [
    "CACHE_ENV",
    "CORRUPT",
    "DEFAULT_MANIFEST",
    "MANIFEST_ENV",
    "MIRROR_ENV",
    "MISSING",
    "PRESENT",
    "Artifact",
    "ArtifactError",
    "Cache",
    "CacheError",
    "FetchError",
    "Fetched",
    "GitSource",
    "Manifest",
    "ManifestError",
    "Status",
    "UnknownArtifactError",
    "add",
    "fetch",
    "load_manifest",
    "parse_manifest",
    "resolve_cache_dir",
    "resolve_manifest_path",
    "resolve_mirrors",
    "sha256_file",
    "verified_path",
]
