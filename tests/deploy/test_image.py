"""deploy/Dockerfile: multi-stage on the pinned toolchain, dependencies cached in
their own layer, a non-root slim runtime with one binary, and a build context that
holds every file the crate embeds at compile time."""

import re

import deploylib as L

DOCKERFILE = (L.DEPLOY / "Dockerfile").read_text()
IGNORE = (L.DEPLOY / "Dockerfile.dockerignore").read_text()


def instructions():
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_multi_stage_on_the_pinned_images():
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.M))
    assert args["RUST_IMAGE"] == "rust:1.95-bookworm"
    assert args["RUNTIME_IMAGE"] == "debian:bookworm-slim"
    froms = [i for i in instructions() if i.startswith("FROM ")]
    assert froms == ["FROM ${RUST_IMAGE} AS builder", "FROM ${RUNTIME_IMAGE} AS runtime"]


def test_dependencies_build_before_the_sources_are_copied():
    steps = instructions()
    manifest = next(i for i, s in enumerate(steps) if s.startswith("COPY Cargo.toml Cargo.lock"))
    deps_build = next(i for i, s in enumerate(steps) if "cargo build" in s)
    sources = next(i for i, s in enumerate(steps) if s.startswith("COPY src"))
    assert manifest < deps_build < sources
    assert all("--locked" in s for s in steps if "cargo build" in s)


def test_runtime_is_non_root_with_one_binary():
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert "ca-certificates" in runtime
    user = re.search(r"^USER (\S+)", runtime, re.M).group(1)
    assert not user.startswith(("0", "root"))
    copies = re.findall(r"^COPY --from=builder (\S+) (\S+)", runtime, re.M)
    assert copies == [("/usr/local/bin/artefatos", "/usr/local/bin/artefatos")]
    assert 'ENTRYPOINT ["/usr/local/bin/artefatos"]' in runtime
    assert re.search(r"ARTEFATOS_LISTEN=0\.0\.0\.0:8080", runtime)


def copied_dirs():
    return set(re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE, re.M))


def test_context_holds_every_embedded_file():
    """include_bytes!/include_str!/sqlx::migrate! paths must be inside what the
    Dockerfile copies and the .dockerignore lets through."""
    allowed = {line[1:].rstrip("/") for line in IGNORE.splitlines() if line.startswith("!")}
    copied = copied_dirs() - {"Cargo.toml"}
    assert allowed >= copied | {"Cargo.toml", "Cargo.lock"}, "copied but ignored by the context"
    embedded = []
    for path in (L.REPO / "src").rglob("*.rs"):
        text = path.read_text()
        for macro, arg in re.findall(r'(include_bytes!|include_str!)\(\s*"([^"]+)"', text):
            embedded.append((path.parent / arg).resolve())
        for arg in re.findall(r'migrate!\(\s*"([^"]+)"', text):
            embedded.append((L.REPO / arg).resolve())
        if re.search(r"migrate!\(\s*\)", text):
            embedded.append(L.REPO / "migrations")
    for target in embedded:
        rel = target.relative_to(L.REPO)
        assert rel.parts[0] in copied, f"{rel} is embedded but not copied into the builder"
        assert target.exists(), f"{rel} is embedded but missing"
