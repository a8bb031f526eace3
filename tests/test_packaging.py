"""The workspace's packaging rules that uv itself does not check."""

import re
import tomllib
from pathlib import Path

import pipeloom
import pipeloom_cli
import pipeloom_observe

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = {
    "pipeloom-core": pipeloom,
    "pipeloom-cli": pipeloom_cli,
    "pipeloom-observe": pipeloom_observe,
}


def load(member: str) -> dict[str, object]:
    with (ROOT / "packages" / member / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_member_pins_equal_member_versions() -> None:
    versions = {m: load(m)["project"]["version"] for m in MEMBERS}  # type: ignore[index]
    for member in MEMBERS:
        for dep in load(member)["project"].get("dependencies", []):  # type: ignore[attr-defined]
            match = re.fullmatch(r"(pipeloom-[a-z]+)==(.+)", dep)
            if match:
                assert match.group(2) == versions[match.group(1)], (member, dep)


def test_module_versions_equal_pyproject_versions() -> None:
    for member, module in MEMBERS.items():
        assert module.__version__ == load(member)["project"]["version"]  # type: ignore[index]


def test_core_depends_on_rich_only() -> None:
    deps = load("pipeloom-core")["project"]["dependencies"]  # type: ignore[index]
    assert [re.split(r"[<>=!~ ]", d)[0] for d in deps] == ["rich"]


def test_every_member_is_typed_and_shares_requires_python() -> None:
    for member, module in MEMBERS.items():
        assert (Path(str(module.__file__)).parent / "py.typed").exists(), member
        assert load(member)["project"]["requires-python"] == ">=3.11"  # type: ignore[index]
    assert (ROOT / ".python-version").read_text().strip() == "3.11"
