"""`TransparentLlm` is the whole interface: read in the source, no consumer names the class that
implements it or uses a member the interface does not declare."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from llm_flow.models.base import TransparentLlm
from llm_flow.models.seq2seq import Seq2SeqLlm

REPO = Path(__file__).resolve().parent.parent
#: Packages that receive a loaded model (ui/ and dataset/ also hold model *requests* named `model`).
CONSUMERS = ("attribution", "cli", "figures", "interventions", "routes", "views")


def sources(packages: tuple[str, ...] | None = None) -> list[tuple[Path, ast.AST]]:
    root = REPO / "llm_flow"
    paths = sorted(root.rglob("*.py"))
    chosen = [p for p in paths if p.relative_to(root).parts[0] != "models"]
    if packages is not None:
        chosen = [p for p in chosen if p.relative_to(root).parts[0] in packages]
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in chosen]


def test_no_module_outside_models_names_the_implementation():
    named = []
    for path, tree in sources():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Name):
                names.append(node.id)
            elif isinstance(node, ast.Attribute):
                names.append(node.attr)
            if "BridgeLlm" in names:
                named.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not named, f"import TransparentLlm from llm_flow.models.base instead: {named}"


def test_every_member_consumers_use_is_declared_by_the_interface():
    """`model.x`, `run.model.x`, `problem.model.x` ...: x must be a member (or an annotated
    attribute) of TransparentLlm, so another implementation knows what it has to provide. A module
    that names the encoder–decoder (`Seq2SeqLlm`, `Seq2SeqRun`) works on that narrower interface
    and may also use its declared members."""
    declared = set(dir(TransparentLlm)) | set(TransparentLlm.__annotations__)
    seq2seq_declared = declared | set(dir(Seq2SeqLlm)) | set(Seq2SeqLlm.__annotations__)
    used: dict[str, list[str]] = {}
    seq2seq_used: dict[str, list[str]] = {}
    for path, tree in sources(CONSUMERS):
        names_seq2seq = any(
            isinstance(node, ast.ImportFrom) and {"Seq2SeqLlm", "Seq2SeqRun"} & {a.name for a in node.names}
            for node in ast.walk(tree)
        )
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "model") or (
                isinstance(owner, ast.Attribute) and owner.attr == "model"
            ):
                (seq2seq_used if names_seq2seq else used).setdefault(node.attr, []).append(
                    f"{path.relative_to(REPO)}:{node.lineno}"
                )
    assert {"hf_model", "bridge", "lock", "tokenizer"} <= set(used), "the scan finds the members in use"
    assert "hf_seq2seq" in seq2seq_used, "the scan finds the encoder–decoder's own members in use"
    undeclared = {name: where for name, where in used.items() if name not in declared}
    undeclared |= {name: where for name, where in seq2seq_used.items() if name not in seq2seq_declared}
    assert not undeclared, undeclared


def test_the_interface_documents_every_member():
    for name in TransparentLlm.__abstractmethods__:
        member = inspect.getattr_static(TransparentLlm, name)
        function = member.fget if isinstance(member, property) else member
        assert inspect.getdoc(function), f"TransparentLlm.{name} has no docstring"
