"""Does every package the image installs at a pinned version have a wheel for both image platforms?

The image (docker/Dockerfile) is built for linux/amd64 and linux/arm64 (GB200 and GH200 nodes have
arm64 Grace CPUs). pip, building either image, needs for each package a wheel whose tags that
platform's CPython and glibc accept; without one it would try a source build (the image has no
compiler) or fail. Checked: every pin in docker/constraints.txt and, followed through their wheels'
metadata, the exact (``==``) requirements of torch's CUDA stack. torch must require CUDA libraries on
both platforms: PyPI's default Linux build, not a CPU-only one.

Only index metadata is read, never a whole wheel: the project's PEP 691 JSON file list and, for the
packages whose requirements are followed, each wheel's METADATA - its PEP 658 file where the index
offers one, else the zip directory and METADATA member read by HTTP range requests (a few hundred
KiB of a wheel that may weigh gigabytes). Every request has a timeout.

    python docker/check_wheels.py    # prints a Markdown table; exit 0 all found, 1 a wheel missing, 2 index unreadable
"""

from __future__ import annotations

import argparse
import email.parser
import io
import json
import re
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

HERE = Path(__file__).resolve().parent
INDEX_URL = "https://pypi.org/simple/"
# Docker platform -> the machine name in wheel tags and environment markers (platform_machine).
PLATFORMS = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
# glibc of the Debian release a python:X.Y-slim-<codename> base image is built on (Debian's libc6).
DEBIAN_GLIBC = {"bookworm": (2, 36), "trixie": (2, 41)}
# Packages whose wheels' requirements are followed (their exact pins are installed with them), and the
# requirement names that mark a CUDA build of torch.
FOLLOWED = {"torch"}
CUDA_REQUIREMENT = re.compile(r"^(nvidia-|cuda-toolkit$)")
JSON_INDEX = "application/vnd.pypi.simple.v1+json"
Entry = dict[str, Any]  # one file of a PEP 691 project page: filename, url, size, requires-python, ...
CONSTRAINTS = "docker/constraints.txt"


class CheckError(Exception):
    """The index could not be read, or a file on it is not what the check needs."""


@dataclass(frozen=True)
class Target:
    """The interpreter and C library of the image, as wheel tags see them."""

    python: tuple[int, int]
    glibc: tuple[int, int]

    @property
    def python_version(self) -> str:
        return f"{self.python[0]}.{self.python[1]}"


@dataclass
class Row:
    """One package the image installs: where each platform's wheel comes from."""

    name: str
    specifier: str  # what was asked for: ==2.13.0 (a pin), ==13.1.1.3.* (a release line)
    required_by: str
    extras: frozenset[str] = frozenset()
    version: str = ""  # the release pip picks
    wheels: dict[str, str | None] = field(default_factory=dict)  # platform -> best tag, None: no wheel


def base_image(dockerfile: str) -> Target:
    """The CPython and glibc of the image's ``FROM python:X.Y-slim-<debian codename>``."""
    match = re.search(r"^FROM python:(\d+)\.(\d+)-slim-(\w+)\s*$", dockerfile, re.M)
    if not match:
        raise CheckError("docker/Dockerfile: no `FROM python:X.Y-slim-<debian release>` line")
    major, minor, codename = int(match[1]), int(match[2]), match[3]
    if codename not in DEBIAN_GLIBC:
        raise CheckError(f"docker/Dockerfile: unknown Debian release {codename!r} (known: {', '.join(DEBIAN_GLIBC)})")
    return Target((major, minor), DEBIAN_GLIBC[codename])


def read_pins(constraints: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a constraints file."""
    pins = {}
    for line in constraints.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def supported_tags(target: Target, machine: str) -> list[Tag]:
    """The wheel tags pip accepts on the image for ``machine``, most preferred first: manylinux
    tags up to the image's glibc (and their legacy aliases), ``linux_<machine>``, then abi3, none and
    pure-Python tags (packaging.tags, as pip builds them for a target platform)."""
    glibc_major, glibc_minor = target.glibc
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    lowest = 5 if machine in ("x86_64", "i686") else 17  # manylinux before 2_17 existed only for x86
    platforms = []
    for minor in range(glibc_minor, lowest - 1, -1):
        platforms.append(f"manylinux_{glibc_major}_{minor}_{machine}")
        if minor in legacy:
            platforms.append(f"{legacy[minor]}_{machine}")
    platforms.append(f"linux_{machine}")
    return [*cpython_tags(target.python, platforms=platforms), *compatible_tags(target.python, platforms=platforms)]


def best_wheel(filenames: list[str], tags: list[Tag]) -> tuple[str, Tag] | None:
    """The wheel pip would pick among ``filenames`` for a platform with ``tags`` (and its best
    matching tag), or None when none of them installs there. Names that are not wheels are ignored."""
    rank = {tag: index for index, tag in enumerate(tags)}
    best: tuple[int, str, Tag] | None = None
    for filename in filenames:
        try:
            _, _, _, wheel_tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        for tag in wheel_tags:
            if tag in rank and (best is None or rank[tag] < best[0]):
                best = (rank[tag], filename, tag)
    return None if best is None else (best[1], best[2])


def marker_environment(target: Target, machine: str) -> dict[str, str]:
    """PEP 508 marker variables of CPython in the Linux image on ``machine``."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{target.python_version}.0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{target.python_version}.0",
        "python_version": target.python_version,
        "sys_platform": "linux",
    }


def applicable_requirements(
    metadata: Message, environment: dict[str, str], extras: frozenset[str]
) -> list[Requirement]:
    """The Requires-Dist entries whose markers hold in ``environment`` with ``extras`` requested."""
    requirements = []
    for text in metadata.get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            raise CheckError(f"unparseable Requires-Dist {text!r}: {error}") from error
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}):
            requirements.append(requirement)
    return requirements


def is_pinned(requirement: Requirement) -> bool:
    """An ``==`` requirement, exact (``==2.29.7``) or a version prefix (``==13.1.1.3.*``): one release
    line the package author chose, as opposed to a range pip resolves freely."""
    specs = list(requirement.specifier)
    return bool(specs) and all(spec.operator in ("==", "===") for spec in specs)


class Index:
    """A PEP 691 simple index, read with a timeout on every request."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self._projects: dict[str, list[Entry]] = {}
        self._lock = threading.Lock()
        self._project_locks: dict[str, threading.Lock] = {}

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers={"User-Agent": "partialfc-check-wheels", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            raise CheckError(f"{url}: HTTP {error.code} {error.reason}") from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise CheckError(f"{url}: {reason} (timeout {self.timeout:g} s per request)") from error

    def files(self, name: str) -> list[Entry]:
        """The project's file entries (PEP 691 ``files``)."""
        key = canonicalize_name(name)
        with self._lock:
            project_lock = self._project_locks.setdefault(key, threading.Lock())
        with project_lock:  # two platforms' threads asking for one project fetch it once
            return self._fetch_files(key)

    def _fetch_files(self, key: str) -> list[Entry]:
        if key not in self._projects:
            url = f"{self.url}{key}/"
            _, body = self.get(url, {"Accept": JSON_INDEX})
            try:
                self._projects[key] = json.loads(body)["files"]
            except (ValueError, KeyError) as error:
                raise CheckError(f"{url}: not a PEP 691 JSON project page ({error})") from error
        return self._projects[key]

    def metadata(self, entry: Entry) -> Message:
        """A wheel's METADATA: the PEP 658 file if the index has one, else read from the wheel's zip
        by range requests (never the whole file)."""
        if entry.get("core-metadata") or entry.get("data-dist-info-metadata"):
            _, body = self.get(entry["url"] + ".metadata")
        else:
            with zipfile.ZipFile(RemoteFile(self, entry["url"], entry["size"])) as wheel:
                names = [n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
                if len(names) != 1:
                    raise CheckError(f"{entry['url']}: {len(names)} .dist-info/METADATA members")
                body = wheel.read(names[0])
        return email.parser.BytesParser().parsebytes(body)


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a file on an HTTP server that answers range requests, reading
    only the blocks asked for (zipfile reads the end directory, then one member)."""

    BLOCK = 256 * 1024

    def __init__(self, index: Index, url: str, size: int) -> None:
        self.index, self.url, self.size, self.position = index, url, size, 0
        self.blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        first, last = self.position // self.BLOCK, (end - 1) // self.BLOCK
        missing = [b for b in range(first, last + 1) if b not in self.blocks]
        if missing:
            start, stop = missing[0] * self.BLOCK, min(self.size, (missing[-1] + 1) * self.BLOCK)
            status, body = self.index.get(self.url, {"Range": f"bytes={start}-{stop - 1}"})
            if status != 206 or len(body) != stop - start:
                raise CheckError(f"{self.url}: the server does not answer range requests (HTTP {status})")
            for block in missing:
                self.blocks[block] = body[(block - missing[0]) * self.BLOCK : (block - missing[0] + 1) * self.BLOCK]
        data = b"".join(self.blocks[b] for b in range(first, last + 1)) if end > self.position else b""
        data = data[self.position - first * self.BLOCK :][: end - self.position]
        self.position += len(data)
        return data


def resolve(index: Index, name: str, specifier: SpecifierSet, target: Target) -> tuple[str | None, dict[str, Entry]]:
    """The version pip picks for ``specifier`` - the newest release matching it that has a file for
    the image's Python (``requires-python``) - and filename -> index entry of that release's wheels.
    (None, {}) when no release matches."""
    releases: dict[Version, dict[str, Entry]] = {}
    for entry in index.files(name):
        filename = entry["filename"]
        requires_python = entry.get("requires-python")
        if requires_python and not SpecifierSet(requires_python).contains(f"{target.python_version}.0"):
            continue
        try:
            if filename.endswith(".whl"):
                _, version, _, _ = parse_wheel_filename(filename)
            else:
                _, version = parse_sdist_filename(filename)
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue
        wheels = releases.setdefault(version, {})
        if filename.endswith(".whl"):
            wheels[filename] = entry
    matching = list(specifier.filter(releases))
    if not matching:
        return None, {}
    chosen = max(matching)
    return str(chosen), releases[chosen]


@dataclass
class Finding:
    """What one row is on one platform: the release pip picks, the wheel tag, the problems, and the
    pinned requirements to check next."""

    version: str | None = None
    tag: str | None = None
    problems: list[str] = field(default_factory=list)
    requirements: list[Row] = field(default_factory=list)


def examine(index: Index, row: Row, platform: str, target: Target) -> Finding:
    """Resolve ``row`` on ``platform``: its release, the wheel pip picks, and (for torch and what it
    pins) that wheel's pinned requirements."""
    machine = PLATFORMS[platform]
    version, wheels = resolve(index, row.name, SpecifierSet(row.specifier), target)
    if version is None:
        return Finding(problems=[f"{row.name}{row.specifier} (required by {row.required_by}): no such release"])
    found = best_wheel(list(wheels), supported_tags(target, machine))
    if found is None:
        return Finding(
            version,
            problems=[
                f"{row.name} {version} (required by {row.required_by}): no wheel for CPython "
                f"{target.python_version} on {platform} (glibc {target.glibc[0]}.{target.glibc[1]}); "
                f"wheels of this release: {', '.join(sorted(wheels)) or 'none'}"
            ],
        )
    finding = Finding(version, str(found[1]))
    if canonicalize_name(row.name) not in FOLLOWED and row.required_by == CONSTRAINTS:
        return finding
    metadata = index.metadata(wheels[found[0]])
    requirements = applicable_requirements(metadata, marker_environment(target, machine), row.extras)
    if canonicalize_name(row.name) == "torch" and not any(
        CUDA_REQUIREMENT.match(canonicalize_name(r.name)) for r in requirements
    ):
        finding.problems.append(
            f"{row.name} {version}: its {platform} wheel {found[0]} requires no CUDA library "
            "(nvidia-*, cuda-toolkit): a CPU-only build, useless on the GPU nodes"
        )
    finding.requirements = [
        Row(r.name, str(r.specifier), row.name, frozenset(r.extras)) for r in requirements if is_pinned(r)
    ]
    return finding


def check(index: Index, pins: dict[str, str], target: Target, workers: int = 8) -> tuple[list[Row], list[str]]:
    """Rows for every pinned package and the pinned requirements followed from them, each with the
    wheel tag pip picks per platform, and the problems found (each naming the package, its version
    and the platform). A requirement whose marker excludes a platform is not checked there. The
    packages of one level of requirements are read in parallel; the result does not depend on it."""
    rows: dict[tuple[str, str], Row] = {}
    problems: list[str] = []
    level = [
        (Row(name, f"=={version}", CONSTRAINTS), platform) for platform in PLATFORMS for name, version in pins.items()
    ]
    with ThreadPoolExecutor(workers) as pool:
        while level:
            todo: list[tuple[Row, str]] = []
            for asked, platform in level:
                row = rows.setdefault((canonicalize_name(asked.name), asked.specifier), asked)
                if platform not in row.wheels:
                    row.wheels[platform] = None
                    todo.append((row, platform))
            findings = pool.map(lambda item: examine(index, item[0], item[1], target), todo)
            level = []
            for (row, platform), finding in zip(todo, findings):
                row.version = finding.version or row.version
                row.wheels[platform] = finding.tag
                problems.extend(finding.problems)
                level.extend((requirement, platform) for requirement in finding.requirements)
    return list(rows.values()), problems


def markdown(rows: list[Row], target: Target) -> str:
    """The table of docs/deploy.md: each package, the release pip picks, what requires it and the
    wheel tag pip picks on each platform."""
    head = ["Package", "Version", "Required by", *(f"{p} wheel (CPython {target.python_version})" for p in PLATFORMS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.name, row.version or row.specifier, row.required_by]
        for platform in PLATFORMS:
            wheel = row.wheels.get(platform, "")
            cells.append(f"`{wheel}`" if wheel else "**none**" if platform in row.wheels else "not installed")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-url", default=INDEX_URL, help="PEP 691 simple index (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default: %(default)s)")
    parser.add_argument("--constraints", type=Path, default=HERE / "constraints.txt", help="the pins to check")
    parser.add_argument("--dockerfile", type=Path, default=HERE / "Dockerfile", help="names the base image")
    args = parser.parse_args(argv)
    try:
        target = base_image(args.dockerfile.read_text())
        rows, problems = check(Index(args.index_url, args.timeout), read_pins(args.constraints.read_text()), target)
    except CheckError as error:
        print(f"check_wheels: cannot check: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown(rows, target))
    for problem in problems:
        print(f"check_wheels: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
