"""KV wire format and movement: frames, codecs, checksums, handshake, TCP sender and receiver.

Knows nothing of vLLM, models or routing. Submodules are imported explicitly so that light
users (the gateway needs only ``transfer.params``) do not pull in torch.
"""
