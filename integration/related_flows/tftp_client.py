"""TFTP client of the related-flows lab: one read request, octet mode.

Usage: tftp_client.py SERVER FILE

Sends the RRQ to SERVER:69 and prints "PENDING sport=N". After "GO" on
stdin it takes DATA blocks from whatever port the server answers from (the
expected connection the firewall's TFTP helper set up), ACKs each to that
port, and prints "DATA len=N sha256=HEX"; "ERROR stage=... what=..." if no
block comes within the timeout.
"""

import hashlib
import socket
import struct
import sys

TIMEOUT = 6.0


def out(line):
    print(line, flush=True)


def main():
    server, name = sys.argv[1], sys.argv[2]
    stage = "rrq"
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))
        sock.sendto(struct.pack("!H", 1) + name.encode() + b"\0octet\0", (server, 69))
        out("PENDING sport=%d" % sock.getsockname()[1])
        stage = "wait"
        if sys.stdin.readline().strip() != "GO":
            raise RuntimeError("no GO on stdin")
        stage = "data"
        sock.settimeout(TIMEOUT)
        data = b""
        expected = 1
        tid = None
        while True:
            packet, src = sock.recvfrom(1024)
            if src[0] != server or src[1] == 69:
                continue
            if tid is None:
                tid = src
            if src != tid:
                continue
            opcode, block = struct.unpack("!HH", packet[:4])
            if opcode != 3:
                raise RuntimeError("opcode %d from %s" % (opcode, src))
            if block == expected & 0xFFFF:
                data += packet[4:]
                expected += 1
            sock.sendto(struct.pack("!HH", 4, block), tid)
            if block == (expected - 1) & 0xFFFF and len(packet) - 4 < 512:
                break
        out("DATA len=%d sha256=%s from=%s:%d" % (len(data), hashlib.sha256(data).hexdigest(), tid[0], tid[1]))
    except Exception as e:  # noqa: BLE001 - every failure is reported
        out("ERROR stage=%s what=%s" % (stage, repr(e)))
        sys.exit(1)


if __name__ == "__main__":
    main()
