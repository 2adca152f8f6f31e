"""The committed tip and the tree of validated, not yet final blocks above it.

Invariant: every block in the tree descends from the root (the newest final block);
a block enters only once its parent is in.
"""

from __future__ import annotations

from medledger.ledger.consensus.types import Block


class BlockTree:
    def __init__(self, root: Block) -> None:
        self.root = root
        self._blocks: dict[bytes, Block] = {root.hash: root}

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, block_hash: bytes) -> Block | None:
        return self._blocks.get(block_hash)

    def add(self, block: Block) -> None:
        if block.parent_hash not in self._blocks:
            raise ValueError("a block enters the tree only after its parent")
        self._blocks[block.hash] = block

    def branch(self, block_hash: bytes) -> list[Block]:
        """Blocks from just above the root up to `block_hash`, oldest first."""
        chain: list[Block] = []
        block = self._blocks[block_hash]
        while block.hash != self.root.hash:
            chain.append(block)
            block = self._blocks[block.parent_hash]
        chain.reverse()
        return chain

    def advance_root(self, new_root: Block) -> None:
        """Make `new_root` (a child of the root) final; drop every block not above it."""
        if new_root.parent_hash != self.root.hash:
            raise ValueError("the root advances one block at a time")
        self._blocks.setdefault(new_root.hash, new_root)
        self.root = new_root
        keep: dict[bytes, Block] = {new_root.hash: new_root}
        # Insertion order puts parents before children, so one pass suffices.
        for block_hash, block in self._blocks.items():
            if block.parent_hash in keep and block_hash != new_root.hash:
                keep[block_hash] = block
        self._blocks = keep
