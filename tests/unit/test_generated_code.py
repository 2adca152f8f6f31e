"""The committed generated code matches protos/, and the protos keep the API conventions."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

import medledger._gen

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "services" / "medledger" / "_gen"
GENERATOR = ROOT / "infra" / "genprotos.py"

# Field numbers in descriptor.proto, used to address SourceCodeInfo locations.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE, _SERVICE_METHOD = 2, 2

# On-chain "name" fields that name an institution or a machine, never a person.
_NON_PERSONAL_NAMES = {
    "medledger.common.v1.RegisterOrganisation.display_name",
    "medledger.common.v1.Validator.name",
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("genprotos", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(root).parts
    }


def _generated_modules() -> list[ModuleType]:
    names = [
        info.name
        for info in pkgutil.walk_packages(medledger._gen.__path__, prefix="medledger._gen.")
        if not info.ispkg
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _file_descriptors() -> list[FileDescriptor]:
    return [m.DESCRIPTOR for m in _generated_modules() if m.__name__.endswith("_pb2")]


def _all_enums(file: FileDescriptor) -> Iterator[EnumDescriptor]:
    def in_message(message: Descriptor) -> Iterator[EnumDescriptor]:
        yield from message.enum_types
        for nested in message.nested_types:
            yield from in_message(nested)

    yield from file.enum_types_by_name.values()
    for message in file.message_types_by_name.values():
        yield from in_message(message)


def _screaming_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def test_committed_tree_matches_a_fresh_generation(tmp_path: Path) -> None:
    out = tmp_path / "_gen"
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    fresh, committed = _tree(out), _tree(GEN)
    added = sorted(set(fresh) - set(committed))
    missing = sorted(set(committed) - set(fresh))
    changed = sorted(p for p in set(fresh) & set(committed) if fresh[p] != committed[p])
    assert (added, missing, changed) == ([], [], []), (
        "services/medledger/_gen is out of date: run .venv/bin/python infra/genprotos.py"
    )


def test_generation_is_deterministic() -> None:
    generator = _load_generator()
    assert generator.generate() == generator.generate()


def test_generator_refuses_to_prune_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not generated")
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert (tmp_path / "notes.txt").exists()


def test_module_references_move_under_gen_but_wire_names_do_not() -> None:
    generator = _load_generator()
    source = (
        "from medledger.common.v1 import actor_pb2 as _actor_pb2\n"
        "x: medledger.common.v1.actor_pb2.Actor\n"
        "_builder.Build(DESCRIPTOR, 'medledger.ledger.v1.ledger_service_pb2', _globals)\n"
        "'/medledger.ledger.v1.LedgerService/GetBlock'\n"
        "b'.medledger.common.v1.Transaction'\n"
    )
    assert generator.rewrite_imports(source) == (
        "from medledger._gen.common.v1 import actor_pb2 as _actor_pb2\n"
        "x: medledger._gen.common.v1.actor_pb2.Actor\n"
        "_builder.Build(DESCRIPTOR, 'medledger._gen.ledger.v1.ledger_service_pb2', _globals)\n"
        "'/medledger.ledger.v1.LedgerService/GetBlock'\n"
        "b'.medledger.common.v1.Transaction'\n"
    )


def test_every_generated_module_imports() -> None:
    modules = _generated_modules()
    packages = {m.DESCRIPTOR.package for m in modules if m.__name__.endswith("_pb2")}
    assert packages == {
        f"medledger.{service}.v1"
        for service in ("common", "ledger", "identity", "consent", "records", "audit")
    }
    grpc_modules = {m.__name__ for m in modules if m.__name__.endswith("_pb2_grpc")}
    assert "medledger._gen.ledger.v1.ledger_service_pb2_grpc" in grpc_modules


def test_every_enum_starts_with_a_prefixed_unspecified_zero() -> None:
    enums = [enum for file in _file_descriptors() for enum in _all_enums(file)]
    assert enums
    for enum in enums:
        prefix = _screaming_snake(enum.name) + "_"
        assert enum.values_by_number[0].name == prefix + "UNSPECIFIED", enum.full_name
        unprefixed = [v.name for v in enum.values if not v.name.startswith(prefix)]
        assert unprefixed == [], enum.full_name


def test_every_service_is_named_service_and_lives_in_its_package() -> None:
    services = [s for f in _file_descriptors() for s in f.services_by_name.values()]
    assert {s.full_name for s in services} == {
        "medledger.ledger.v1.LedgerService",
        "medledger.identity.v1.IdentityService",
        "medledger.consent.v1.ConsentService",
        "medledger.records.v1.RecordsService",
        "medledger.audit.v1.AuditService",
    }
    for service in services:
        assert service.name.endswith("Service"), service.full_name
        file = service.file
        stem = file.name.rsplit("/", 1)[-1].removesuffix(".proto")
        assert file.name == file.package.replace(".", "/") + f"/{stem}.proto"
        assert stem == _screaming_snake(service.name).lower(), file.name


def test_paginated_lists_follow_aip_158() -> None:
    for file in _file_descriptors():
        for service in file.services_by_name.values():
            for method in service.methods:
                if not method.name.startswith(("List", "Query")):
                    continue
                request = {f.name for f in method.input_type.fields}
                response = {f.name for f in method.output_type.fields}
                assert {"page_size", "page_token"} <= request, method.full_name
                assert "next_page_token" in response, method.full_name


def test_creates_take_a_request_id() -> None:
    for file in _file_descriptors():
        for service in file.services_by_name.values():
            for method in service.methods:
                if method.name.startswith("Create") and method.name != "CreateTokenChallenge":
                    fields = {f.name for f in method.input_type.fields}
                    assert "request_id" in fields, method.full_name


def _uncommented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    commented = {
        tuple(location.path)
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }
    missing: list[str] = []

    def need(path: tuple[int, ...], what: str) -> None:
        if path not in commented:
            missing.append(f"{file.name}: {what}")

    def message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str) -> None:
        need(path, name)
        for i, field in enumerate(msg.field):
            need((*path, _MESSAGE_FIELD, i), f"{name}.{field.name}")
        for i, oneof in enumerate(msg.oneof_decl):
            if not oneof.name.startswith("_"):  # proto3 `optional` makes synthetic oneofs
                need((*path, _MESSAGE_ONEOF, i), f"{name}.{oneof.name}")
        for i, nested in enumerate(msg.nested_type):
            message(nested, (*path, _MESSAGE_NESTED, i), f"{name}.{nested.name}")
        for i, nested_enum in enumerate(msg.enum_type):
            enum(nested_enum, (*path, _MESSAGE_ENUM, i), f"{name}.{nested_enum.name}")

    def enum(en: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str) -> None:
        need(path, name)
        for i, value in enumerate(en.value):
            need((*path, _ENUM_VALUE, i), f"{name}.{value.name}")

    for i, msg in enumerate(file.message_type):
        message(msg, (_FILE_MESSAGE, i), msg.name)
    for i, en in enumerate(file.enum_type):
        enum(en, (_FILE_ENUM, i), en.name)
    for i, service in enumerate(file.service):
        need((_FILE_SERVICE, i), service.name)
        for j, method in enumerate(service.method):
            need((_FILE_SERVICE, i, _SERVICE_METHOD, j), f"{service.name}.{method.name}")
    return missing


def test_every_declaration_has_a_comment(tmp_path: Path) -> None:
    generator = _load_generator()
    descriptor_set = tmp_path / "protos.binpb"
    generator.run_protoc(
        [f"--descriptor_set_out={descriptor_set}", "--include_source_info"],
        generator.proto_files(),
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    assert len(files) == len(generator.proto_files())
    assert [m for f in files for m in _uncommented(f)] == []


@pytest.mark.parametrize("word", ["name", "mrn", "birth", "dob", "address", "phone", "email"])
def test_on_chain_payloads_have_no_identifying_fields(word: str) -> None:
    from medledger._gen.common.v1 import transaction_pb2

    seen: set[str] = set()
    offending: list[str] = []

    def walk(message: Descriptor) -> None:
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            if word in field.name.split("_") and field.full_name not in _NON_PERSONAL_NAMES:
                offending.append(field.full_name)
            if field.message_type is not None:
                walk(field.message_type)

    walk(transaction_pb2.TransactionBody.DESCRIPTOR)
    assert offending == []
