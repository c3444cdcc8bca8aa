"""The transfer contract carried in vLLM's ``kv_transfer_params`` between gateway and workers.

The gateway (or driver) asks a prefill worker to stream a prompt's KV to a decode worker's
transfer address under a transfer id, then hands the same params to the decode worker, which
waits for that transfer. Plain data, no torch: the gateway imports this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRANSFER_ID = "prfaas_transfer_id"
DECODE_ADDRESS = "prfaas_decode_addr"
NUM_TOKENS = "prfaas_num_tokens"
REMOTE_PREFILL = "prfaas_remote_prefill"
FIRST_BLOCK = "prfaas_first_block"  # blocks before it are already on the decode worker


@dataclass(frozen=True)
class TransferParams:
    transfer_id: str
    decode_address: str
    num_tokens: int | None = None
    first_block: int = 0

    def for_prefill(self) -> dict[str, Any]:
        params: dict[str, Any] = {TRANSFER_ID: self.transfer_id,
                                  DECODE_ADDRESS: self.decode_address}
        if self.first_block:
            params[FIRST_BLOCK] = self.first_block
        return params

    def for_decode(self) -> dict[str, Any]:
        params = {**self.for_prefill(), REMOTE_PREFILL: True}
        if self.num_tokens is not None:
            params[NUM_TOKENS] = self.num_tokens
        return params

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> TransferParams | None:
        if not params or TRANSFER_ID not in params or DECODE_ADDRESS not in params:
            return None
        num_tokens = params.get(NUM_TOKENS)
        return cls(str(params[TRANSFER_ID]), str(params[DECODE_ADDRESS]),
                   int(num_tokens) if num_tokens is not None else None,
                   max(int(params.get(FIRST_BLOCK) or 0), 0))
