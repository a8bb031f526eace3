#!/usr/bin/env bash
# Build pipeloom's container image on this machine, from scratch, with podman.
#
#   deploy/build-image.sh [--tag NAME] [--base IMAGE] [--context-only DIR]
#
#   --tag NAME          the image to build (default: localhost/pipeloom:latest)
#   --base IMAGE        build FROM this image (Python 3.11 with venv) instead of the local
#                       Debian bookworm base this script makes with debootstrap
#   --context-only DIR  only write the build context (DIR/wheels) and stop; needs uv and pip,
#                       not podman (the GitHub workflow then builds it with docker buildx)
#
# Three steps, each skipped when its output is already there:
#   1. base: `debootstrap --variant=minbase bookworm` with python3 and python3-venv, saved as a
#      tarball and imported with `podman import` (no container registry needed);
#   2. wheelhouse: the dependencies pinned by uv.lock, downloaded as cp311 wheels for this
#      machine's architecture; the three pipeloom packages are built afresh by `uv build`;
#   3. `podman build` of the Containerfile, offline (pip --no-index): layers are reused until
#      uv.lock or the packages change.
# The base tarball and the wheelhouse are cached under $PIPELOOM_IMAGE_CACHE
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/pipeloom-image), keyed by what they are made from.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAG="localhost/pipeloom:latest"
BASE=""
CONTEXT_ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="${2:?--tag needs a name}"; shift 2 ;;
        --base) BASE="${2:?--base needs an image}"; shift 2 ;;
        --context-only) CONTEXT_ONLY="${2:?--context-only needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

CACHE="${PIPELOOM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipeloom-image}"
PYVER="3.11"            # bookworm's python3; the Containerfile's default BASE has the same
SUITE="bookworm"
ARCH="$(uname -m)"      # wheels and base are for this machine's architecture
BASE_PACKAGES="python3,python3-venv"
mkdir -p "$CACHE"
# One build at a time per cache (a test session and a manual build may overlap).
exec 9>"$CACHE/.lock"
flock 9
# Left by a build that was killed: nobody else holds the lock, so nobody is using them.
find "$CACHE" -maxdepth 1 \( -name '.deps.*' -o -name '.rootfs.*' \) -exec rm -rf {} +

say() { echo "build-image: $*" >&2; }
need() {
    command -v "$1" >/dev/null 2>&1 && return
    say "'$1' is not installed: $2"
    exit 1
}
hash_of() { sha256sum | cut -c1-16; }

if command -v uv >/dev/null 2>&1; then uv() { command uv "$@"; }; else uv() { python3 -m uv "$@"; }; fi
# pip evaluates environment markers (python_full_version < '3.12') with the Python it runs
# on, so it must be the image's: this machine's python3 when it is that version, else uv's.
if python3 -c "import sys, pip; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))" \
    >/dev/null 2>&1; then
    pip_download() { python3 -m pip download "$@"; }
else
    pip_download() { uv tool run --python "$PYVER" pip download "$@"; }
fi

# -- 2. the wheelhouse ----------------------------------------------------------------------

# The dependencies of pipeloom-core[dask], pipeloom-cli and pipeloom-observe, exactly as locked.
deps_wheelhouse() {
    local reqs key dir tmp
    reqs="$(cd "$ROOT" && uv export --locked --all-packages --extra dask --no-default-groups \
        --no-emit-workspace --format requirements-txt --quiet)"
    key="$(printf '%s\n%s %s\n' "$reqs" "$PYVER" "$ARCH" | hash_of)"
    dir="$CACHE/deps-$key"
    if [ -f "$dir/requirements.txt" ]; then
        say "dependency wheels: cached ($dir)"
    else
        say "dependency wheels: downloading for cp${PYVER/./} $ARCH"
        tmp="$(mktemp -d "$CACHE/.deps.XXXXXX")"
        printf '%s\n' "$reqs" >"$tmp/reqs.in"
        # Binary wheels for the image's Python, whatever Python runs pip; --require-hashes
        # checks every file against uv.lock.
        pip_download --quiet --no-deps --require-hashes --only-binary=:all: \
            --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" \
            --platform "manylinux_2_28_$ARCH" --platform "manylinux_2_17_$ARCH" \
            --platform "manylinux2014_$ARCH" \
            -r "$tmp/reqs.in" -d "$tmp" 2> >(grep -v "^WARNING: Location" >&2)
        mv "$tmp/reqs.in" "$tmp/requirements.txt"
        rm -rf "$dir"
        mv "$tmp" "$dir"
        # Older keys are of no use any more.
        find "$CACHE" -maxdepth 1 -name 'deps-*' ! -name "deps-$key" -exec rm -rf {} +
    fi
    DEPS_DIR="$dir"
}

# The build context: wheels/deps (hard links into the cache) and wheels/project (built now).
write_context() {
    local out="$1"
    deps_wheelhouse
    rm -rf "$out/wheels"
    mkdir -p "$out/wheels/deps" "$out/wheels/project"
    # Hard links where the cache and the context share a file system, else copies.
    cp -l "$DEPS_DIR"/* "$out/wheels/deps/" 2>/dev/null || cp "$DEPS_DIR"/* "$out/wheels/deps/"
    say "project wheels: uv build"
    (cd "$ROOT" && uv build --all-packages --wheel --quiet --out-dir "$out/wheels/project")
    # uv build writes a .gitignore into its output directory; only wheels belong here.
    find "$out/wheels/project" -type f ! -name '*.whl' -delete
}

if [ -n "$CONTEXT_ONLY" ]; then
    mkdir -p "$CONTEXT_ONLY"
    write_context "$(cd "$CONTEXT_ONLY" && pwd)"
    say "build context written to $CONTEXT_ONLY"
    exit 0
fi

need podman "install it (Debian: apt-get install podman runc debootstrap)"
# crun fails on some machines (cgroups, rlimits); runc with deploy/containers.conf works.
if [ -z "${CONTAINERS_CONF:-}" ] && [ -x /usr/sbin/runc ]; then
    export CONTAINERS_CONF="$ROOT/deploy/containers.conf"
fi

# -- 1. the base ----------------------------------------------------------------------------

ROOTFS_TMP=""
local_base() {
    local key image tarball
    key="$(printf '%s %s %s %s v1\n' "$SUITE" minbase "$BASE_PACKAGES" "$ARCH" | hash_of)"
    image="localhost/pipeloom-base:$SUITE-$key"
    tarball="$CACHE/base-$SUITE-$key.tar"
    if podman image exists "$image"; then
        say "base: $image (already imported)"
    else
        if [ -f "$tarball" ]; then
            say "base: cached rootfs $tarball"
        else
            need debootstrap "install it (apt-get install debootstrap) or pass --base IMAGE"
            [ "$(id -u)" = 0 ] || { say "debootstrap needs root; or pass --base IMAGE"; exit 1; }
            say "base: debootstrap --variant=minbase $SUITE (about a minute)"
            ROOTFS_TMP="$(mktemp -d "$CACHE/.rootfs.XXXXXX")"
            trap 'rm -rf "$ROOTFS_TMP"' EXIT
            debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" \
                "$ROOTFS_TMP/rootfs" >"$ROOTFS_TMP/debootstrap.log" 2>&1 || {
                tail -n 20 "$ROOTFS_TMP/debootstrap.log" >&2
                say "debootstrap failed (log above)"
                exit 1
            }
            # What an image does not need: downloaded packages, package lists, docs.
            rm -rf "$ROOTFS_TMP/rootfs/var/cache/apt/archives/"*.deb \
                "$ROOTFS_TMP/rootfs/var/lib/apt/lists/"* \
                "$ROOTFS_TMP/rootfs/usr/share/doc/"* "$ROOTFS_TMP/rootfs/usr/share/man/"*
            tar --numeric-owner -C "$ROOTFS_TMP/rootfs" -cf "$ROOTFS_TMP/base.tar" .
            mv "$ROOTFS_TMP/base.tar" "$tarball"
            rm -rf "$ROOTFS_TMP"
            trap - EXIT
            find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$SUITE-$key.tar" -delete
        fi
        podman import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
        say "base: imported $image"
    fi
    BASE="$image"
}

# -- 3. the image ---------------------------------------------------------------------------

[ -n "$BASE" ] || local_base
CONTEXT="$CACHE/context"
write_context "$CONTEXT"
say "image: podman build $TAG (FROM $BASE)"
previous="$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
# Offline: everything the image needs is in the context. Build output goes to stderr.
podman build --network none --build-arg "BASE=$BASE" --tag "$TAG" \
    --file "$ROOT/Containerfile" "$CONTEXT" >&2
current="$(podman image inspect --format '{{.Id}}' "$TAG")"
# The image this tag named before is ~100 MB of venv: drop it once no tag names it.
if [ -n "$previous" ] && [ "$previous" != "$current" ] \
    && [ "$(podman image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
say "image: $TAG ready ($(podman image inspect --format '{{.Size}}' "$TAG" | numfmt --to=si)B)"
