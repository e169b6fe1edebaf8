"""TFTP server of the related-flows lab (RFC 1350 read requests, octet mode).

Usage: tftp_server.py ADDR ROOT

Listens on ADDR:69 and prints "READY". On a read request it prints
"RRQ peer=ADDR:PORT file=NAME" and waits for "GO" on stdin (the test fails
the firewalls over in between); then, as every TFTP server does, it answers
from a new port (its transfer ID): DATA blocks of 512 bytes, each resent
until ACKed (bounded), and prints "SENT blocks=N" or "ERROR stage=... what=...".
Serves one request, then exits.
"""

import os
import socket
import struct
import sys

BLOCK = 512
ACK_TIMEOUT = 1.0
TRIES = 5


def out(line):
    print(line, flush=True)


def main():
    addr, root = sys.argv[1], sys.argv[2]
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((addr, 69))
    listener.settimeout(60)
    out("READY")
    stage = "rrq"
    try:
        packet, peer = listener.recvfrom(1024)
        opcode = struct.unpack("!H", packet[:2])[0]
        if opcode != 1:
            raise RuntimeError("opcode %d is not RRQ" % opcode)
        name = packet[2:].split(b"\0")[0].decode()
        out("RRQ peer=%s:%d file=%s" % (peer[0], peer[1], name))
        stage = "wait"
        if sys.stdin.readline().strip() != "GO":
            raise RuntimeError("no GO on stdin")
        with open(os.path.join(root, os.path.basename(name)), "rb") as f:
            data = f.read()
        stage = "send"
        tid = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tid.bind((addr, 0))
        tid.settimeout(ACK_TIMEOUT)
        blocks = len(data) // BLOCK + 1
        for n in range(1, blocks + 1):
            chunk = data[(n - 1) * BLOCK : n * BLOCK]
            for _ in range(TRIES):
                tid.sendto(struct.pack("!HH", 3, n & 0xFFFF) + chunk, peer)
                try:
                    ack, src = tid.recvfrom(1024)
                except socket.timeout:
                    continue
                if src == peer and ack[:4] == struct.pack("!HH", 4, n & 0xFFFF):
                    break
            else:
                raise RuntimeError("block %d never ACKed" % n)
        out("SENT blocks=%d" % blocks)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        out("ERROR stage=%s what=%s" % (stage, repr(e)))
        sys.exit(1)


if __name__ == "__main__":
    main()
