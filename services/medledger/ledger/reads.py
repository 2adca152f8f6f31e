"""Read side of a validator, shared by its gRPC and NATS APIs: final blocks,
receipts and the validator set as protobuf messages."""

from __future__ import annotations

from medledger._gen.common.v1 import transaction_pb2, validator_pb2
from medledger._gen.ledger.v1 import ledger_bus_pb2
from medledger._gen.ledger.v1 import ledger_service_pb2 as pb
from medledger.core.errors import InvalidArgument, NotFound
from medledger.ledger import codec
from medledger.ledger.consensus.types import BlockHeader, FinalityCertificate, ValidatorSet
from medledger.ledger.store import BlockStore
from medledger.merkle import inclusion_proof

MAX_BATCH_BLOCKS = 64
MAX_BATCH_BYTES = 4 * 1024 * 1024


class BlockNotFound(NotFound):
    reason = "BLOCK_NOT_FOUND"


class TransactionNotFinal(NotFound):
    reason = "TX_NOT_FINAL"


def header_pb(h: BlockHeader) -> pb.BlockHeader:
    return pb.BlockHeader(
        chain_id=h.chain_id,
        height=h.height,
        round=h.round,
        previous_hash=h.parent_hash,
        tx_root=h.tx_root,
        validator_set_hash=h.validator_set_hash,
        next_validator_set_hash=h.next_validator_set_hash,
        proposer=h.proposer,
        timestamp_unix_ms=h.timestamp_unix_ms,
    )


def certificate_pb(cert: FinalityCertificate, validators: ValidatorSet) -> pb.FinalityCertificate:
    return pb.FinalityCertificate(
        chain_id=cert.chain_id,
        height=cert.height,
        block_hash=cert.block_hash,
        signatures=[
            pb.FinalitySignature(
                validator_index=s.signer,
                validator=validators.validators[s.signer].name,
                validator_public_key=validators.validators[s.signer].public_key,
                signature=s.signature,
            )
            for s in cert.signatures
            if 0 <= s.signer < validators.size
        ],
    )


def validator_set_pb(validators: ValidatorSet) -> pb.ValidatorSet:
    return pb.ValidatorSet(
        validators=[
            validator_pb2.Validator(
                organisation=f"organisations/{v.organisation}",
                name=v.name,
                public_key=v.public_key,
                power=v.power,
            )
            for v in validators.validators
        ],
        total_power=validators.total_power,
        hash=validators.hash,
    )


class LedgerReads:
    """Final blocks of one validator's store, as API messages."""

    def __init__(self, store: BlockStore, validators: ValidatorSet) -> None:
        self._store = store
        self._validators = validators

    @property
    def latest_height(self) -> int:
        return self._store.height

    def block(self, height: int, header_only: bool = False) -> pb.Block:
        stored = self._store.block(height)
        if stored is None:
            raise BlockNotFound("BLOCK_NOT_FOUND", f"no final block at height {height}")
        block = codec.decode_block(stored.block)
        message = pb.Block(header=header_pb(block.header), hash=block.hash)
        if stored.certificate is not None:
            message.finality_certificate.CopyFrom(
                certificate_pb(codec.decode_certificate(stored.certificate), self._validators)
            )
        if not header_only:
            for tx in block.transactions:
                message.transactions.add().ParseFromString(tx)
        return message

    def block_by_hash(self, block_hash: bytes, header_only: bool = False) -> pb.Block:
        stored = self._store.block_by_hash(block_hash)
        if stored is None:
            raise BlockNotFound("BLOCK_NOT_FOUND", "no final block with that hash")
        return self.block(stored.height, header_only)

    def is_certified(self, height: int) -> bool:
        return height == 0 or self._store.certificate(height) is not None

    def block_batch(
        self, start_height: int, header_only: bool = False
    ) -> ledger_bus_pb2.BlockBatch:
        """Consecutive certified blocks from `start_height`, bounded in count and bytes."""
        batch = ledger_bus_pb2.BlockBatch(latest_height=max(self._store.height, 0))
        size = 0
        height = start_height
        while len(batch.blocks) < MAX_BATCH_BLOCKS and size < MAX_BATCH_BYTES:
            if height > self._store.height or not self.is_certified(height):
                break
            block = self.block(height, header_only)
            size += block.ByteSize()
            batch.blocks.append(block)
            height += 1
        return batch

    def receipt(self, tx_id_hex: str) -> pb.TransactionReceipt:
        try:
            tx_id = bytes.fromhex(tx_id_hex)
        except ValueError:
            raise InvalidArgument("TX_ID_MALFORMED", "tx_id must be lowercase hex") from None
        location = self._store.transaction(tx_id)
        stored = None if location is None else self._store.block(location.height)
        if location is None or stored is None:
            raise TransactionNotFinal("TX_NOT_FINAL", "transaction is not in a final block (yet)")
        if stored.certificate is None:
            raise TransactionNotFinal(
                "TX_NOT_CERTIFIED", "the block is final; its certificate is on its way"
            )
        block = codec.decode_block(stored.block)
        return pb.TransactionReceipt(
            tx_id=tx_id_hex,
            height=location.height,
            index=location.index,
            inclusion_proof=inclusion_proof(list(block.transactions), location.index),
            header=header_pb(block.header),
            finality_certificate=certificate_pb(
                codec.decode_certificate(stored.certificate), self._validators
            ),
            transaction=transaction_pb2.Transaction.FromString(block.transactions[location.index]),
            tx_count=len(block.transactions),
        )

    def validator_set(self) -> pb.ValidatorSet:
        return validator_set_pb(self._validators)
