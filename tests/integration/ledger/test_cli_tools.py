"""`medledger ledger genesis | get-block | get-receipt | verify-block` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medledger.cli.main import main
from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.testing.ledger import LocalLedger, record_tx


def test_genesis_command_writes_a_consortium(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["ledger", "genesis", "--orgs", "a,b,c,d", "--chain-id", "x", "--out", str(tmp_path)]
    )
    assert code == 0
    assert "tolerates f=1" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "genesis.json").read_text())["validators"]) == 4
    assert (tmp_path / "c" / "validator.key").exists()
    assert (
        main(
            ["ledger", "genesis", "--orgs", "a,a", "--chain-id", "x", "--out", str(tmp_path / "2")]
        )
        == 2
    )


async def test_fetch_and_verify_offline(
    ledger_network: LocalLedger, nats_bus: NatsBus, tmp_path: Path
) -> None:
    import asyncio

    client = ledger_network.client(nats_bus)
    receipt = await client.submit_and_wait(
        record_tx(ledger_network.genesis.chain_id, SigningKey.generate(), 1), 20
    )
    chain = ["--chain-id", ledger_network.genesis.chain_id, "--nats-url", ledger_network.nats_url]
    files = []
    for height in (receipt.height - 1, receipt.height):
        out = tmp_path / f"block-{height}.json"
        assert (
            await asyncio.to_thread(
                main, ["ledger", "get-block", str(height), *chain, "--out", str(out)]
            )
            == 0
        )
        files.append(out)
    receipt_file = tmp_path / "receipt.json"
    assert (
        await asyncio.to_thread(
            main, ["ledger", "get-receipt", receipt.tx_id, *chain, "--out", str(receipt_file)]
        )
        == 0
    )
    genesis = ["--genesis", str(ledger_network.genesis_path)]
    assert main(["ledger", "verify-block", *map(str, files), str(receipt_file), *genesis]) == 0

    # One changed byte in the header's tx root fails, naming the check.
    raw = json.loads(files[1].read_text())
    raw["header"]["txRoot"] = "A" + raw["header"]["txRoot"][1:]
    files[1].write_text(json.dumps(raw))
    assert main(["ledger", "verify-block", str(files[1]), *genesis]) == 1

    raw = json.loads(receipt_file.read_text())
    raw["index"] = str(int(raw.get("index", "0")) + 1)
    receipt_file.write_text(json.dumps(raw))
    assert main(["ledger", "verify-block", str(receipt_file), *genesis]) == 1
